#!/usr/bin/env bash
# The one test command (README, .ci/run). On a fresh Debian machine it installs what the tests
# need, starts a Docker engine if none answers and a throw-away etcd, runs every test of the
# workspace with all features, then stops what it started and sweeps what the tests created.
# Safe to run twice in a row.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m[test.sh]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- packages -------------------------------------------------------------------------------
missing=()
{ command -v protoc >/dev/null && [ -f /usr/include/google/protobuf/timestamp.proto ]; } ||
  missing+=(protobuf-compiler libprotobuf-dev)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v curl >/dev/null || missing+=(curl) # the README's curl examples are run as written
{ command -v ip >/dev/null && command -v nsenter >/dev/null; } || missing+=(iproute2 util-linux) # a private dockerd
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || missing+=(chromium chromium-driver) # the console's test
# A size-enforcing file system on a loop device for a private dockerd (tests/rootfs.rs): XFS
# with pquota where the kernel has XFS quotas, else btrfs with quotas.
{ command -v mkfs.xfs >/dev/null && command -v mkfs.btrfs >/dev/null; } || missing+=(xfsprogs btrfs-progs)
command -v iptables >/dev/null || missing+=(iptables) # the guard between owners' networks
{ command -v ssh >/dev/null && command -v sftp >/dev/null && command -v ssh-keyscan >/dev/null; } || missing+=(openssh-client) # the SSH gateway's tests
started_dockerd=""
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || missing+=(docker.io)
  started_dockerd=yes
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The document is checked by using it: a client generated from it, and schemathesis' checks.
if ! command -v openapi-python-client >/dev/null || ! python3 -c 'import schemathesis' 2>/dev/null; then
  log "installing openapi-python-client and schemathesis (PyPI)"
  python3 -m pip install -q --disable-pip-version-check "openapi-python-client==0.29.*" "schemathesis>=4,<5"
fi

workdir=$(mktemp -d -t gpu-replica-test.XXXXXX)
etcd_pid=""
dockerd_pid=""
server_pid=""

sweep_docker() {
  # Everything the tests create carries io.gpu-replica.test; nothing else is touched.
  local ids
  ids=$(docker ps -aq --filter label=io.gpu-replica.test 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  ids=$(docker ps -aq --filter label=io.gpu-replica.helper 2>/dev/null || true)
  [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
  ids=$(docker volume ls -q --filter label=io.gpu-replica.test 2>/dev/null || true)
  [ -z "$ids" ] || docker volume rm -f $ids >/dev/null 2>&1 || true
  # Images: newest first, so snapshots go before the snapshots they build on.
  ids=$(docker images -q --filter label=io.gpu-replica.test 2>/dev/null | awk '!seen[$0]++' || true)
  [ -z "$ids" ] || docker rmi -f $ids >/dev/null 2>&1 || true
  docker rmi gpu-replica/helper:empty >/dev/null 2>&1 || true
  # Per-owner networks of the tests' servers (labelled with the tests' label too).
  ids=$(docker network ls -q --filter label=io.gpu-replica.test 2>/dev/null || true)
  [ -z "$ids" ] || docker network rm $ids >/dev/null 2>&1 || true
}

cleanup() {
  local status=$?
  sweep_docker
  [ -z "$server_pid" ] || { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; }
  [ -z "$etcd_pid" ] || { kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null || true; }
  if [ -n "$dockerd_pid" ]; then
    as_root kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
  rm -rf "$workdir"
  exit $status
}
trap cleanup EXIT INT TERM

wait_for() { # seconds, description, command...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq "$((seconds * 5))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "$what did not come up in ${seconds}s"; return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- Docker ---------------------------------------------------------------------------------
if [ -n "$started_dockerd" ]; then
  log "no Docker engine answers: starting dockerd"
  as_root dockerd >"$workdir/dockerd.log" 2>&1 &
  dockerd_pid=$!
  wait_for 60 dockerd docker info || { tail -20 "$workdir/dockerd.log"; exit 1; }
fi
log "$(docker version --format 'Docker engine {{.Server.Version}} (API {{.Server.APIVersion}})')"
sweep_docker # leftovers of an earlier, interrupted run

# --- etcd -----------------------------------------------------------------------------------
client_port=$(free_port)
peer_port=$(free_port)
etcd --name gpu-replica-test --data-dir "$workdir/etcd" \
  --listen-client-urls "http://127.0.0.1:$client_port" \
  --advertise-client-urls "http://127.0.0.1:$client_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "gpu-replica-test=http://127.0.0.1:$peer_port" \
  >"$workdir/etcd.log" 2>&1 &
etcd_pid=$!
health() { python3 -c "import urllib.request,sys; sys.exit(0 if b'true' in urllib.request.urlopen('http://127.0.0.1:$client_port/health', timeout=1).read() else 1)"; }
wait_for 30 etcd health || { tail -20 "$workdir/etcd.log"; exit 1; }
export GPU_REPLICA_TEST_ETCD="http://127.0.0.1:$client_port"
log "etcd on $GPU_REPLICA_TEST_ETCD"

# --- tests ----------------------------------------------------------------------------------
export RUST_BACKTRACE=1
cargo test --workspace --all-features --all-targets
cargo test --workspace --all-features --doc
log "example: embedding the engine, on the real Docker engine"
cargo run --quiet --all-features --example embed
log "example: custom tooling on the typed client, against a real server"
server_port=$(free_port)
cargo build --quiet -p gpu-replica-cli
target/debug/gpu-replica serve --addr "127.0.0.1:$server_port" --data-dir "$workdir/remote" \
  --gpus fake:4 --gpu-attach env --port-range 46800-46850 --stop-timeout 0 \
  --label io.gpu-replica.test=1 >"$workdir/remote.log" 2>&1 &
server_pid=$!
remote_ok() { curl -sf "http://127.0.0.1:$server_port/ping"; }
wait_for 30 "the example's server" remote_ok || { tail -20 "$workdir/remote.log"; exit 1; }
cargo run --quiet --all-features --example remote -- "http://127.0.0.1:$server_port"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
