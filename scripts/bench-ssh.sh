#!/usr/bin/env bash
# scp of a file through the SSH gateway against `docker cp` of the same file, both ways, on a
# real server and Docker. Prints seconds and MB/s for each.
#
#   scripts/bench-ssh.sh [BINARY] [SIZE_MB]
#
# BINARY defaults to target/release/gpu-replica (cargo build --release -p gpu-replica-cli),
# SIZE_MB to 200. Needs Docker, busybox-static and openssh-client.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/gpu-replica}
size_mb=${2:-200}
image=gpu-replica-bench/busybox:latest
work=$(mktemp -d -t gpu-replica-bench-ssh.XXXXXX)
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  docker rm -f bench.scp-1 >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! docker image inspect "$image" >/dev/null 2>&1; then
  mkdir -p "$work/root/bin" "$work/root/tmp"
  cp /bin/busybox "$work/root/bin/"
  for applet in sh cat ls mkdir rm mv sleep wc stat; do ln -s busybox "$work/root/bin/$applet"; done
  tar -C "$work/root" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$image" >/dev/null
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port)
ssh_port=$(free_port)
GPU_REPLICA_TOKEN=bench GPU_REPLICA_SSH_ADDR=127.0.0.1:$ssh_port "$bin" serve --gpus fake:1 \
  --addr "127.0.0.1:$http" --data-dir "$work/data" --stop-timeout 0 --log-level warn \
  --label io.gpu-replica.bench=1 >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/ping" >/dev/null && break; sleep 0.1; done
api() { curl -sf -H "Authorization: Bearer bench" -H 'content-type: application/json' "$@"; }
ssh-keygen -q -t ed25519 -N "" -f "$work/key"
api -X POST -d "{\"key\":\"$(cat "$work/key.pub")\"}" "http://127.0.0.1:$http/api/v1/users/admin/keys" >/dev/null
api -X POST -d "{\"imageName\":\"$image\",\"replicaSetName\":\"bench.scp\",\"gpuCount\":0}" \
  "http://127.0.0.1:$http/api/v1/replicaSet" >/dev/null

head -c "${size_mb}M" /dev/urandom >"$work/file"
opts=(-q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes
  -o BatchMode=yes -o LogLevel=ERROR -i "$work/key" -P "$ssh_port")
seconds() { python3 -c "import sys,time; print(time.time() - float(sys.argv[1]))" "$1"; }
report() { python3 -c "import sys; t=float(sys.argv[2]); print(f'{sys.argv[1]:<24} {t:6.2f} s {float(sys.argv[3])/t:8.1f} MB/s')" "$1" "$2" "$size_mb"; }

start=$(date +%s.%N); scp "${opts[@]}" "$work/file" "bench.scp@127.0.0.1:/tmp/in.bin"; t=$(seconds "$start")
report "scp in (gateway)" "$t"
start=$(date +%s.%N); scp "${opts[@]}" "bench.scp@127.0.0.1:/tmp/in.bin" "$work/out.bin"; t=$(seconds "$start")
report "scp out (gateway)" "$t"
cmp -s "$work/file" "$work/out.bin" || { echo "scp: the bytes differ" >&2; exit 1; }
start=$(date +%s.%N); docker cp "$work/file" bench.scp-1:/tmp/cp.bin; t=$(seconds "$start")
report "docker cp in" "$t"
start=$(date +%s.%N); docker cp bench.scp-1:/tmp/cp.bin "$work/cp-out.bin"; t=$(seconds "$start")
report "docker cp out" "$t"
cmp -s "$work/file" "$work/cp-out.bin" || { echo "docker cp: the bytes differ" >&2; exit 1; }
api -X DELETE "http://127.0.0.1:$http/api/v1/replicaSet/bench.scp" >/dev/null
