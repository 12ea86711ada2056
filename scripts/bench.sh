#!/usr/bin/env bash
# End-to-end figures on the real Docker engine, printed as one table (BENCHMARKS.md):
# patch time by image size and change size next to Docker's own floor and to the original
# gpu-docker-api's procedure; volume resize next to `cp -a`; API throughput and p99 next to a
# bare axum handler; idle RSS and time to ready; then the reads' shares of bare axum, idle and
# under patch loops, with an admin's and a user's token (scripts/bench-reads.sh). Everything it
# creates is removed at the end.
#
#   scripts/bench.sh [ROUNDS]      (default 3; medians are printed)
#
# Needs Docker, wrk and busybox-static (apt-get install wrk busybox-static).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
cargo build -q --release -p gpu-replica-cli
cargo build -q --release --all-features --example bench_image --example hello
bin=target/release/gpu-replica
examples=target/release/examples
work=$(mktemp -d -t gpu-replica-bench.XXXXXX)
label=io.gpu-replica.bench=1
server=""
hello=""

cleanup() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  [ -z "$hello" ] || kill "$hello" 2>/dev/null || true
  wait 2>/dev/null || true
  ids=$(docker ps -aq --filter label=$label); [ -z "$ids" ] || docker rm -f $ids >/dev/null
  ids=$(docker ps -aq --filter name=bench-); [ -z "$ids" ] || docker rm -f $ids >/dev/null
  ids=$(docker volume ls -q --filter label=$label); [ -z "$ids" ] || docker volume rm -f $ids >/dev/null
  ids=$(docker volume ls -q --filter name=bench-); [ -z "$ids" ] || docker volume rm -f $ids >/dev/null
  for image in $(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E '^(gpu-replica/bench|bench/|gpu-replica-bench/)'); do
    docker rmi -f "$image" >/dev/null 2>&1 || true
  done
  docker rmi gpu-replica/helper:empty >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- the server -------------------------------------------------------------------------------
addr=127.0.0.1:$(port)
api=http://$addr/api/v1
start=$(now)
# The 2 MB bench image has a busybox `cp`: volume copies run inside Docker (--copy-image).
"$examples/bench_image" gpu-replica-bench/img:2MB 0 >/dev/null
"$bin" serve --addr "$addr" --data-dir "$work/data" --gpus fake:8 --gpu-attach env \
  --stop-timeout 0 --port-range 48000-48199 --label $label --log-level warn \
  --copy-image gpu-replica-bench/img:2MB >"$work/server.log" 2>&1 &
server=$!
until curl -sf "http://$addr/ping" >/dev/null; do sleep 0.01; done
ready=$(elapsed "$start" "$(now)")
sleep 1
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$server/status)

call() { # method path [json] -> body; fails on a non-200 envelope
  local out
  out=$(curl -s -X "$1" "$api$2" -H 'content-type: application/json' ${3:+-d "$3"})
  case "$out" in *'"code":200'*) echo "$out" ;; *) echo "FAILED $1 $2: $out" >&2; return 1 ;; esac
}
change() { # container, MB
  docker exec "$1" dd if=/dev/urandom of="/root/change-$RANDOM$RANDOM" bs=1M count="$2" 2>/dev/null
}

# --- images -----------------------------------------------------------------------------------
declare -A image_bytes=([2MB]=0 [512MB]=$((510 << 20)) [2GB]=$((2046 << 20)))
for size in 2MB 512MB 2GB; do
  "$examples/bench_image" "gpu-replica-bench/img:$size" "${image_bytes[$size]}" >/dev/null
done

rows=()
declare -A ours floor original
for size in 2MB 512MB 2GB; do
  image=gpu-replica-bench/img:$size
  for mb in 1 100; do
    # ours: PATCH through the API (new version, filesystem carried)
    name=bench${size}c${mb}
    call POST /replicaSet "{\"imageName\":\"$image\",\"replicaSetName\":\"$name\",\"gpuCount\":1,\"containerPorts\":[\"22\"]}" >/dev/null
    times=()
    for round in $(seq "$rounds"); do
      container=$(call GET "/replicaSet/$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["info"]["containerName"])')
      change "$container" "$mb"
      t0=$(now); call PATCH "/replicaSet/$name" "{\"gpuPatch\":{\"gpuCount\":$((round % 2 + 1))}}" >/dev/null; t1=$(now)
      times+=("$(elapsed "$t0" "$t1")")
    done
    ours[$size,$mb]=$(median "${times[@]}")
    call DELETE "/replicaSet/$name" >/dev/null

    # Docker's floor: stop, commit, run from the snapshot, remove (docker CLI)
    times=()
    for round in $(seq "$rounds"); do
      docker run -d -t --name bench-old --label $label "$image" sh >/dev/null
      change bench-old "$mb"
      t0=$(now)
      docker stop -t 0 bench-old >/dev/null
      docker commit bench-old gpu-replica-bench/floor:snap >/dev/null
      docker run -d -t --name bench-new --label $label gpu-replica-bench/floor:snap sh >/dev/null
      docker rm bench-old >/dev/null
      t1=$(now)
      times+=("$(elapsed "$t0" "$t1")")
      docker rm -f bench-new >/dev/null; docker rmi gpu-replica-bench/floor:snap >/dev/null
    done
    floor[$size,$mb]=$(median "${times[@]}")

    # The original's procedure: run a new container, copy the old merged rootfs into it with
    # cp -rf -p, copy it once more into a snapshot folder, remove the old container.
    times=()
    for round in $(seq "$rounds"); do
      docker run -d -t --name bench-old --label $label "$image" sh >/dev/null
      change bench-old "$mb"
      t0=$(now)
      docker run -d -t --name bench-new --label $label "$image" sh >/dev/null
      old=$(docker inspect -f '{{.GraphDriver.Data.MergedDir}}' bench-old)
      new=$(docker inspect -f '{{.GraphDriver.Data.MergedDir}}' bench-new)
      cp -rf -p "$old"/* "$new"/ 2>/dev/null || true
      mkdir -p "$work/snapshot"; cp -rf -p "$old"/* "$work/snapshot"/ 2>/dev/null || true
      docker rm -f bench-old >/dev/null
      t1=$(now)
      times+=("$(elapsed "$t0" "$t1")")
      docker rm -f bench-new >/dev/null; rm -rf "$work/snapshot"
    done
    original[$size,$mb]=$(median "${times[@]}")
    rows+=("| patch, image $size, change ${mb} MB | ${ours[$size,$mb]} s | floor ${floor[$size,$mb]} s (×$(ratio "${ours[$size,$mb]}" "${floor[$size,$mb]}")) | original ${original[$size,$mb]} s ($(ratio "${original[$size,$mb]}" "${ours[$size,$mb]}")× slower) |")
  done
done

# --- volume resize ----------------------------------------------------------------------------
for mb in 100 1024; do
  vol=benchv$mb
  call POST /volumes "{\"name\":\"$vol\",\"size\":\"4GB\"}" >/dev/null
  docker run --rm --label $label -v "$vol-1:/data" gpu-replica-bench/img:2MB dd if=/dev/urandom of=/data/blob bs=1M count=$mb 2>/dev/null
  t0=$(now); call PATCH "/volumes/$vol/size" '{"size":"8GB"}' >/dev/null; t1=$(now)
  resize=$(elapsed "$t0" "$t1")
  src=$(docker volume inspect -f '{{.Mountpoint}}' "$vol-2")
  docker volume create --label $label bench-cp >/dev/null
  dst=$(docker volume inspect -f '{{.Mountpoint}}' bench-cp)
  sync; t0=$(now); cp -a "$src/." "$dst/"; sync; t1=$(now)
  cpa=$(elapsed "$t0" "$t1")
  docker volume rm bench-cp >/dev/null
  call DELETE "/volumes/$vol" >/dev/null
  rows+=("| volume resize, $mb MB of data | $resize s | cp -a $cpa s | throughput $(python3 -c "print(f'{$cpa / $resize * 100:.0f}')")% of cp -a |")
done

# --- API throughput ---------------------------------------------------------------------------
call POST /replicaSet "{\"imageName\":\"gpu-replica-bench/img:2MB\",\"replicaSetName\":\"benchapi\",\"gpuCount\":2,\"containerPorts\":[\"22\"]}" >/dev/null
hello_addr=127.0.0.1:$(port)
"$examples/hello" "$hello_addr" & hello=$!
until curl -sf "http://$hello_addr/" >/dev/null; do sleep 0.01; done
load() { # url -> "requests/s p99"
  wrk -t1 -c8 -d10s --latency "$1" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
scale = {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
print(f"{rps:.0f} {float(p99.group(1)) * scale:.2f}")'
}
read -r hello_rps hello_p99 < <(load "http://$hello_addr/")
for path in "/replicaSet/benchapi" "/resources/gpus"; do
  read -r rps p99 < <(load "$api$path")
  rows+=("| GET $path | $rps req/s, p99 $p99 ms | bare axum $hello_rps req/s, p99 $hello_p99 ms | $(python3 -c "print(f'{$rps / $hello_rps * 100:.0f}')")% of bare |")
done
call DELETE /replicaSet/benchapi >/dev/null
rows+=("| server idle RSS | $((rss_kb / 1024)) MB ($rss_kb kB) | | |")
rows+=("| server start to ready | $ready s | | |")

echo
echo "| measure | gpu-replica | baseline | ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(docker version --format 'Docker {{.Server.Version}}'), storage driver $(docker info --format '{{.Driver}}'); rounds: $rounds"

# --- reads on the request path: every read's share of bare axum, idle and under patches --------
echo
kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""
scripts/bench-reads.sh "$bin"
