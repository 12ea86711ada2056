#!/usr/bin/env bash
# Writes the fixture store of this release: gpu-replica-cli/tests/fixtures/store-VERSION/
# (state.redb, and expect.json: what the tests must find in it). Run once per release, on a
# machine with Docker and the test image (any test run builds it); never over an existing
# fixture: fixtures are only added, so every later release is tested against each of them.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(cargo metadata --no-deps --format-version 1 |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="gpu-replica-cli"))')
out="gpu-replica-cli/tests/fixtures/store-$version"
[ ! -e "$out" ] || { echo "$out exists: fixtures are never rewritten" >&2; exit 1; }
image=${GPU_REPLICA_TEST_IMAGE:-gpu-replica-test/busybox:latest}
docker image inspect "$image" >/dev/null || { echo "no $image: run a test first" >&2; exit 1; }
cargo build --quiet -p gpu-replica-cli
bin=target/debug/gpu-replica
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=fixture-admin-token-$version
export GPU_REPLICA_SERVER=http://127.0.0.1:$port GPU_REPLICA_TOKEN=$token
"$bin" serve --addr "127.0.0.1:$port" --data-dir "$work" --gpus fake:4 --gpu-attach env \
  --port-range 47900-47950 --stop-timeout 0 --label io.gpu-replica.test=1 >"$work/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "$GPU_REPLICA_SERVER/ping" >/dev/null && break; sleep 0.2; done
api() { curl -sf -X "$1" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  "$GPU_REPLICA_SERVER$2" ${3:+-d "$3"}; }
api POST /api/v1/volumes '{"name":"fixture_vol","size":"10MB"}' >/dev/null
user=$(api POST /api/v1/users '{"name":"fixture_user"}')
user_token=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["data"]["token"])' "$user")
ssh-keygen -q -t ed25519 -N '' -C fixture -f "$work/key"
api POST /api/v1/users/fixture_user/keys "{\"key\":\"$(cat "$work/key.pub")\"}" >/dev/null
api POST /api/v1/replicaSet "{\"imageName\":\"$image\",\"replicaSetName\":\"fixture_a\",\"gpuCount\":1,\"binds\":[{\"src\":\"fixture_vol-1\",\"dest\":\"/data\"}],\"containerPorts\":[\"80\"],\"env\":[\"A=1\"]}" >/dev/null
api PATCH /api/v1/replicaSet/fixture_a '{"gpuPatch":{"gpuCount":2}}' >/dev/null
curl -sf -X POST -H "Authorization: Bearer $user_token" -H 'Content-Type: application/json' \
  "$GPU_REPLICA_SERVER/api/v1/replicaSet" \
  -d "{\"imageName\":\"$image\",\"replicaSetName\":\"fixture_b\",\"gpuCount\":0}" >/dev/null
api PATCH /api/v1/replicaSet/fixture_b/stop >/dev/null
kill $pid; wait $pid || true
trap - EXIT
mkdir -p "$out"
cp "$work/state.redb" "$out/"
cat >"$out/expect.json" <<JSON
{
  "release": "$version",
  "adminToken": "$token",
  "sets": [
    {"name": "fixture_a", "owner": "admin", "version": 2, "versions": 2},
    {"name": "fixture_b", "owner": "fixture_user", "version": 1, "versions": 1}
  ],
  "volumes": ["fixture_vol"],
  "users": [{"name": "fixture_user", "token": "$user_token", "keys": 1}]
}
JSON
# Its containers and volume go; the store keeps their records.
docker rm -f fixture_a-2 fixture_b-1 >/dev/null 2>&1 || true
docker volume rm -f fixture_vol-1 >/dev/null 2>&1 || true
for set in fixture_a fixture_b; do
  ids=$(docker images -q --filter "label=io.gpu-replica.replicaset=$set")
  [ -z "$ids" ] || docker rmi -f $ids >/dev/null 2>&1 || true
done
rm -rf "$work"
echo "wrote $out ($(du -h "$out/state.redb" | cut -f1))"
