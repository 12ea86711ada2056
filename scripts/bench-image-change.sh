#!/usr/bin/env bash
# An image change carrying /root (0, 100 MB and 1 GB of random bytes in it) against a bare
# `docker cp` of the same folder from one container into another (streamed, as the engine
# does), on a real server and Docker. Prints seconds for each.
#
#   scripts/bench-image-change.sh [BINARY] [SIZES_MB...]
#
# BINARY defaults to target/release/gpu-replica (cargo build --release -p gpu-replica-cli),
# SIZES_MB to "0 100 1000". Needs Docker and busybox-static.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/gpu-replica}
shift || true
sizes=${*:-0 100 1000}
image_a=gpu-replica-bench/carry:a
image_b=gpu-replica-bench/carry:b
work=$(mktemp -d -t gpu-replica-bench-image.XXXXXX)
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  docker rm -f bench.carry-1 bench.carry-2 bench.carry-3 bench.cp-from bench.cp-to >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! docker image inspect "$image_a" >/dev/null 2>&1; then
  mkdir -p "$work/root/bin" "$work/root/tmp" "$work/root/root"
  cp /bin/busybox "$work/root/bin/"
  for applet in sh cat ls mkdir rm mv sleep wc stat dd head du; do ln -s busybox "$work/root/bin/$applet"; done
  tar -C "$work/root" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' - "$image_a" >/dev/null
fi
docker tag "$image_a" "$image_b"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port)
GPU_REPLICA_TOKEN=bench "$bin" serve --gpus fake:1 --addr "127.0.0.1:$http" \
  --data-dir "$work/data" --stop-timeout 0 --log-level warn --label io.gpu-replica.bench=1 \
  >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/ping" >/dev/null && break; sleep 0.1; done
api() { curl -sf -H "Authorization: Bearer bench" -H 'content-type: application/json' "$@"; }
seconds() { python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.2f}')" "$1"; }

echo "# $(nproc) cores; $(docker info --format '{{.Driver}}') storage; $bin"
for mb in $sizes; do
  api -X POST -d "{\"imageName\":\"$image_a\",\"replicaSetName\":\"bench.carry\",\"gpuCount\":0}" \
    "http://127.0.0.1:$http/api/v1/replicaSet" >/dev/null
  docker exec bench.carry-1 sh -c "dd if=/dev/urandom of=/root/blob bs=1M count=$mb 2>/dev/null; sync"
  start=$(date +%s.%N)
  api -X PATCH -d "{\"imageName\":\"$image_b\",\"keepPaths\":[\"/root\"]}" \
    "http://127.0.0.1:$http/api/v1/replicaSet/bench.carry" >/dev/null
  t_change=$(seconds "$start")
  kept=$(docker exec bench.carry-2 du -sm /root | cut -f1)
  # The floor: the same folder streamed from one container into another with docker cp.
  docker create --name bench.cp-from "$image_a" >/dev/null
  docker create --name bench.cp-to "$image_b" >/dev/null
  docker cp bench.carry-2:/root - | docker cp - bench.cp-from:/ >/dev/null # set up, untimed
  start=$(date +%s.%N)
  docker cp bench.cp-from:/root - | docker cp - bench.cp-to:/ >/dev/null
  t_cp=$(seconds "$start")
  printf '%-34s %6s s   (docker cp of the folder: %s s; %s MB kept)\n' \
    "image change carrying ${mb} MB" "$t_change" "$t_cp" "$kept"
  docker rm -f bench.cp-from bench.cp-to >/dev/null
  api -X DELETE "http://127.0.0.1:$http/api/v1/replicaSet/bench.carry" >/dev/null
done
docker rmi "$image_b" >/dev/null 2>&1 || true
