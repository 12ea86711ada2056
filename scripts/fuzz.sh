#!/usr/bin/env bash
# Fuzzes a real server with schemathesis (PyPI), against our own /openapi.json and against the
# gpu-docker-api contract, for a bounded number of cases per operation. Prints the figures;
# exits non-zero on any failure of any check against our document, or on a server error against
# the contract's.
#
#   scripts/fuzz.sh [CASES_PER_OPERATION]     (default 100)
#
# Needs Docker (scripts/test.sh installs everything else the server needs).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-100}
contract=${GPU_REPLICA_CONTRACT:-../shared/contract/gpu-docker-api.openapi.json}

command -v st >/dev/null || python3 -m pip install -q schemathesis
cargo build -q -p gpu-replica-cli
bin=target/debug/gpu-replica

workdir=$(mktemp -d -t gpu-replica-fuzz.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# With a server token: users the fuzzer adds never lock it out of the routes.
token=fuzz-$RANDOM$RANDOM
"$bin" serve --addr "127.0.0.1:$port" --data-dir "$workdir" --gpus fake:4 --gpu-attach env --token "$token" \
  --port-range 47000-47199 --stop-timeout 0 --label io.gpu-replica.test=1 --log-level warn \
  >"$workdir/server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  ids=$(docker ps -aq --filter label=io.gpu-replica.test); [ -z "$ids" ] || docker rm -f $ids >/dev/null
  ids=$(docker volume ls -q --filter label=io.gpu-replica.test); [ -z "$ids" ] || docker volume rm -f $ids >/dev/null
  ids=$(docker images -q --filter label=io.gpu-replica.replicaset); [ -z "$ids" ] || docker rmi -f $ids >/dev/null 2>&1 || true
  docker rmi gpu-replica/helper:empty >/dev/null 2>&1 || true
  rm -rf "$workdir"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ping" >/dev/null && break; sleep 0.1; done

status=0
run() { # name, schema, checks, extra args...
  local name=$1 schema=$2 checks=$3; shift 3
  echo "== $name: $schema"
  if ! st run "$schema" "$@" --checks "$checks" --max-examples "$cases" \
      -H "Authorization: Bearer $token" \
      --workers 1 --request-timeout 60 \
      --report junit --report-junit-path "$workdir/$name.xml" >"$workdir/$name.out" 2>&1; then
    status=1
  fi
  if grep -q "FAILURES" "$workdir/$name.out"; then
    sed -n '/FAILURES/,/WARNINGS/p' "$workdir/$name.out"
  fi
  sed -n '/SUMMARY/,$p' "$workdir/$name.out"
  python3 - "$workdir/$name.xml" "$name" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tests = sum(int(s.get("tests", 0)) for s in suites)
failures = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
print(f"{sys.argv[2]}: {tests} operations tested, {failures} with failures")
PY
}
# Our own document with every check schemathesis has (stateful phase included): the document
# must say exactly what the server does.
run ours "http://127.0.0.1:$port/openapi.json" all
# The original's contract: only that nothing is a server error (it does not describe our
# additions, statuses or stricter rules).
if [ -f "$contract" ]; then
  run contract "$contract" not_a_server_error --url "http://127.0.0.1:$port"
else
  echo "contract schema not found at $contract (set GPU_REPLICA_CONTRACT)"
fi
if ! kill -0 "$server" 2>/dev/null; then
  echo "the server died during fuzzing:"; tail -20 "$workdir/server.log"; status=1
fi
exit $status
