#!/usr/bin/env bash
# The read figures of the request path: GET info, list and /resources/gpus under wrk (1
# thread, 8 connections, 10 s) with the admin's token (no users) and with a user's token
# (users exist), idle and while 8 clients patch 8 sets in a loop; each next to a bare axum
# handler (examples/hello.rs) measured in the same conditions in the same run, as a share of
# its requests/s and a multiple of its p99. The server runs at its default log level with its
# access log on. Compare the tree before a change and after it:
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
admin=bench-reads-admin-token
pids=()
loops=()
cleanup() {
  for pid in "${loops[@]}" "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ids=$(docker ps -aq --filter label=$label); [ -z "$ids" ] || docker rm -f $ids >/dev/null
  for image in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^gpu-replica(-bench)?/' | grep -v busybox); do
    docker rmi -f "$image" >/dev/null 2>&1 || true
  done
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
print(f"{rps:.0f} {float(p99.group(1)) * scale:.3f}")'
}
share() { python3 -c "print(f'{$1 / $2 * 100:.0f}%')"; }
times() { python3 -c "print(f'{$1 / $2:.2f}×')"; }

"$examples/bench_image" gpu-replica-bench/img:2MB 0 >/dev/null
hello_addr=127.0.0.1:$(port)
"$examples/hello" "$hello_addr" & pids+=($!)
until curl -sf "http://$hello_addr/" >/dev/null; do sleep 0.01; done

echo "| server | request | token | idle req/s | of bare | p99 ms (× bare) | patching req/s | of bare | p99 ms (× bare) |"
echo "|---|---|---|---|---|---|---|---|---|"
n=0
for bin in "$@"; do
  n=$((n + 1))
  addr=127.0.0.1:$(port)
  "$bin" serve --addr "$addr" --data-dir "$work/data-$n" --gpus fake:24 --gpu-attach env \
    --stop-timeout 0 --port-range 48200-48399 --label $label --token "$admin" \
    >"$work/server-$n.log" 2>&1 &
  server=$!; pids+=($server)
  until curl -sf "http://$addr/ping" >/dev/null; do sleep 0.01; done
  api() { # token method path [json]
    curl -sf -X "$2" -H "Authorization: Bearer $1" "http://$addr/api/v1$3" ${4:+-d "$4"}
  }
  api "$admin" POST /replicaSet '{"imageName":"gpu-replica-bench/img:2MB","replicaSetName":"benchreads","gpuCount":2}' >/dev/null
  for i in $(seq 8); do
    api "$admin" POST /replicaSet "{\"imageName\":\"gpu-replica-bench/img:2MB\",\"replicaSetName\":\"benchp$i\",\"gpuCount\":1}" >/dev/null
  done
  # Let the new containers settle (their start is Docker's work on the same two cores), and
  # warm the server's kept answers up, before measuring.
  sleep 3
  wrk -t1 -c8 -d2s -H "Authorization: Bearer $admin" "http://$addr/api/v1/replicaSet/benchreads" >/dev/null
  declare -A idle=() busy=()
  for path in /api/v1/replicaSet/benchreads /api/v1/replicaSet /api/v1/resources/gpus; do
    idle[admin,$path]=$(load "http://$addr$path" "$admin")
  done
  bare_idle=$(load "http://$hello_addr/")
  # A user exists now: their token, on a set of their own.
  user=$(api "$admin" POST /users '{"name":"benchu"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["token"])')
  api "$user" POST /replicaSet '{"imageName":"gpu-replica-bench/img:2MB","replicaSetName":"benchuser","gpuCount":1}' >/dev/null
  sleep 3
  for path in /api/v1/replicaSet/benchuser /api/v1/replicaSet /api/v1/resources/gpus; do
    idle[user,$path]=$(load "http://$addr$path" "$user")
  done
  # 8 clients patching 8 sets in a loop.
  for i in $(seq 8); do
    ( gpus=1; while true; do gpus=$((3 - gpus)); api "$admin" PATCH "/replicaSet/benchp$i" "{\"gpuPatch\":{\"gpuCount\":$gpus}}" >/dev/null || true; done ) &
    loops+=($!)
  done
  sleep 2
  for path in /api/v1/replicaSet/benchreads /api/v1/replicaSet /api/v1/resources/gpus; do
    busy[admin,$path]=$(load "http://$addr$path" "$admin")
  done
  for path in /api/v1/replicaSet/benchuser /api/v1/replicaSet /api/v1/resources/gpus; do
    busy[user,$path]=$(load "http://$addr$path" "$user")
  done
  bare_busy=$(load "http://$hello_addr/")
  for pid in "${loops[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${loops[@]}" 2>/dev/null || true
  loops=()
  read -r bi_rps bi_p99 <<<"$bare_idle"
  read -r bb_rps bb_p99 <<<"$bare_busy"
  for who in admin user; do
    for path in /api/v1/replicaSet/benchreads /api/v1/replicaSet /api/v1/resources/gpus; do
      [ "$who" = user ] && [ "$path" = /api/v1/replicaSet/benchreads ] && path=/api/v1/replicaSet/benchuser
      read -r i_rps i_p99 <<<"${idle[$who,$path]}"
      read -r b_rps b_p99 <<<"${busy[$who,$path]}"
      echo "| $bin | GET $path | $who | $i_rps | $(share "$i_rps" "$bi_rps") | $i_p99 ($(times "$i_p99" "$bi_p99")) | $b_rps | $(share "$b_rps" "$bb_rps") | $b_p99 ($(times "$b_p99" "$bb_p99")) |"
    done
  done
  echo "| bare axum (examples/hello.rs) | GET / | | $bi_rps | | $bi_p99 | $bb_rps | | $bb_p99 |"
  kill "$server"; wait "$server" 2>/dev/null || true
  ids=$(docker ps -aq --filter label=$label); [ -z "$ids" ] || docker rm -f $ids >/dev/null
done
echo
echo "machine: $(nproc) cores; wrk -t1 -c8 -d10s; server at its default log level, access log on"
