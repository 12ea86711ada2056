#!/usr/bin/env bash
# Reads over HTTPS against plain HTTP on the same release build: two servers on one data
# directory's worth of state each, a self-signed certificate (P-256) made with openssl, wrk with
# 8 kept-alive connections for 10 s on GET /api/v1/resources/gpus and GET /ping. Prints one
# Markdown row per measure. Needs Docker, openssl and wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
cargo build --release --quiet -p gpu-replica-cli
bin=target/release/gpu-replica
work=$(mktemp -d -t gpu-replica-tls.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=IP:127.0.0.1,DNS:localhost 2>/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
started=""
start() { # name, extra flags... -> $started (not in a subshell: the pid must be remembered)
  local name=$1; shift
  started=127.0.0.1:$(port)
  mkdir -p "$work/$name"
  "$bin" serve --gpus fake:4 --gpu-attach env --data-dir "$work/$name" --addr "$started" \
    --log-level warn "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}
start plain; plain=$started
start tls --tls-cert "$work/cert.pem" --tls-key "$work/key.pem"; tls=$started
until curl -sf "http://$plain/ping" >/dev/null; do sleep 0.05; done
until curl -sfk "https://$tls/ping" >/dev/null; do sleep 0.05; done
load() { # url -> "requests/s p99-ms"
  wrk -t1 -c8 -d10s --latency "$1" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
scale = {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
print(f"{rps:.0f} {float(p99.group(1)) * scale:.2f}")'
}
echo "| GET | http | https | https / http |"
echo "|---|---|---|---|"
for path in /ping /api/v1/resources/gpus; do
  read -r h_rps h_p99 < <(load "http://$plain$path")
  read -r s_rps s_p99 < <(load "https://$tls$path")
  echo "| $path | $h_rps req/s, p99 $h_p99 ms | $s_rps req/s, p99 $s_p99 ms | $(python3 -c "print(f'{$s_rps / $h_rps * 100:.0f}')")% |"
done
# New connection per request (the handshake's cost): curl, 200 sequential requests.
for scheme in http https; do
  addr=$plain; [ "$scheme" = https ] && addr=$tls
  t0=$(date +%s.%N)
  for _ in $(seq 200); do curl -sfk -o /dev/null "$scheme://$addr/ping"; done
  t1=$(date +%s.%N)
  echo "| /ping, a new connection each (curl ×200) | $scheme: $(python3 -c "print(f'{($t1 - $t0) / 200 * 1000:.2f}')") ms per request | | |"
done
echo
echo "machine: $(nproc) cores; $(wrk --version 2>&1 | head -1)"
