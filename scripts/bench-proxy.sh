#!/usr/bin/env bash
# The web-service proxy against the container's own address, on a real server and Docker: a
# large download (curl), small GETs (wrk, 8 connections, 10 s) and WebSocket round trips
# (gpu-replica-wsecho), each through the proxy and direct. The service is the workspace's
# gpu-replica-wsecho in a busybox image. Prints one line per figure.
#
#   scripts/bench-proxy.sh [BINARY] [SIZE_MB]
#
# BINARY defaults to target/release/gpu-replica (cargo build --release -p gpu-replica-cli),
# SIZE_MB to 200. Needs Docker, busybox-static, curl and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/gpu-replica}
size_mb=${2:-200}
bytes=$((size_mb * 1000 * 1000))
image=gpu-replica-bench/wsecho:latest
work=$(mktemp -d -t gpu-replica-bench-proxy.XXXXXX)
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  docker rm -f bench.web-1 >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

target="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS='-C target-feature=+crt-static' cargo build -q --release -p gpu-replica-wsecho \
  --target "$target" --target-dir target/wsecho
wsecho="target/wsecho/$target/release/gpu-replica-wsecho"
docker image rm -f "$image" >/dev/null 2>&1 || true
mkdir -p "$work/root/bin" "$work/root/tmp"
cp /bin/busybox "$work/root/bin/"
cp "$wsecho" "$work/root/bin/ws-echo"
for applet in sh cat ls sleep; do ln -s busybox "$work/root/bin/$applet"; done
tar -C "$work/root" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$image" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port)
proxy=$(free_port)
GPU_REPLICA_TOKEN=bench "$bin" serve --gpus fake:1 --addr "127.0.0.1:$http" \
  --proxy-addr "127.0.0.1:$proxy" --data-dir "$work/data" --stop-timeout 0 --log-level warn \
  --label io.gpu-replica.bench=1 >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/ping" >/dev/null && break; sleep 0.1; done
api() { curl -sf -H "Authorization: Bearer bench" -H 'content-type: application/json' "$@"; }
api -X POST -d "{\"imageName\":\"$image\",\"replicaSetName\":\"bench.web\",\"gpuCount\":0,\"cmd\":[\"ws-echo\",\"serve\",\"9000\"]}" \
  "http://127.0.0.1:$http/api/v1/replicaSet" >/dev/null
ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' bench.web-1)
direct="http://$ip:9000"
for _ in $(seq 100); do curl -sf "$direct/ready" >/dev/null && break; sleep 0.1; done
link=$(api -X POST -d '{"port":9000}' "http://127.0.0.1:$http/api/v1/replicaSet/bench.web/open" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["url"])')
curl -sf -L -c "$work/jar" -b "$work/jar" "$link" >/dev/null
cookie=$(awk '$6 == "gpu_replica_proxy" { print $7 }' "$work/jar")
proxied="http://127.0.0.1:$proxy/bench.web/9000"

echo "# $(nproc) cores; service: gpu-replica-wsecho in a container; proxy: $bin"
download() { # label url
  local best=""
  for _ in 1 2 3; do
    t=$(curl -sf -H "Cookie: gpu_replica_proxy=$cookie" -o /dev/null -w '%{time_total}' "$2/big?bytes=$bytes")
    best=$(python3 -c "import sys; a=sys.argv[1]; b=float(sys.argv[2]); print(b if not a else min(float(a), b))" "$best" "$t")
  done
  python3 -c "import sys; t=float(sys.argv[2]); print(f'{sys.argv[1]:<28} {t:6.2f} s {int(sys.argv[3])/t/1e6:8.1f} MB/s (best of 3)')" "$1" "$best" "$bytes"
}
download "download ${size_mb} MB direct" "$direct"
download "download ${size_mb} MB proxy" "$proxied"

gets() { # label url
  wrk -t1 -c8 -d10s --latency -H "Cookie: gpu_replica_proxy=$cookie" "$2/small" >"$work/wrk" 2>&1
  python3 - "$1" "$work/wrk" <<'EOF'
import re, sys
text = open(sys.argv[2]).read()
rate = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
def pct(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", text, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
print(f"{sys.argv[1]:<28} {float(rate):8.0f} req/s  p50 {pct(50):.2f} ms  p99 {pct(99):.2f} ms")
EOF
}
gets "small GETs direct" "$direct"
gets "small GETs proxy" "$proxied"

rtt() { # label url
  printf '%-28s ' "$1"
  "$wsecho" rtt "$2/" 2000 -H "Cookie: gpu_replica_proxy=$cookie"
}
rtt "WebSocket round trip direct" "ws://$ip:9000"
rtt "WebSocket round trip proxy" "ws://127.0.0.1:$proxy/bench.web/9000"
api -X DELETE "http://127.0.0.1:$http/api/v1/replicaSet/bench.web" >/dev/null
