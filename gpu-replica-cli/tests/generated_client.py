"""Drives a real server with a Python client generated from its own /openapi.json.

Run by tests/generated_client.rs, which starts the server, serves the document, generates the
client with openapi-python-client into PKG_PARENT/gpu_replica_client and calls:

    python3 generated_client.py DOCUMENT PKG_PARENT BASE_URL TOKEN IMAGE HOST_DIR PREFIX

Every operation of the document is called at least once with an answer it documents as
success and once with one it documents as an error. For each reply: the status is the one
expected, the generated function parsed it (not None), the parsed model has no keys the
document does not declare, and it turns back into exactly the JSON the server sent. Prints a
JSON summary on the last line; exits 1 listing every failure.
"""

import importlib
import json
import re
import sys
import traceback

import attrs

document_path, pkg_parent, base_url, token, image, host_dir, prefix = sys.argv[1:8]
sys.path.insert(0, pkg_parent)

from gpu_replica_client import AuthenticatedClient  # noqa: E402
from gpu_replica_client.types import Unset  # noqa: E402

document = json.load(open(document_path))
client = AuthenticatedClient(base_url=base_url, token=token, timeout=300.0)

failures = []
driven = {}  # (tag, operation) -> set of "success" / "error"
replies = 0


def snake(name):
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def module_of(tag, operation):
    module = snake(operation)
    if module == "list":  # a Python builtin: the generator appends "_"
        module += "_"
    return importlib.import_module(f"gpu_replica_client.api.{snake(tag)}.{module}")


def model(name):
    """A generated model class by its schema name (`RunBody` -> models.run_body.RunBody)."""
    return getattr(importlib.import_module("gpu_replica_client.models"), name)


def unknown_keys(value, path="$"):
    """Keys a parsed model holds that its schema does not declare (free-form maps aside)."""
    found = []
    if attrs.has(type(value)):
        fields = [f for f in attrs.fields(type(value)) if f.name != "additional_properties"]
        extra = getattr(value, "additional_properties", {})
        if fields and extra:
            found.append(f"{path}: {type(value).__name__} has undeclared {sorted(extra)}")
        for f in fields:
            found += unknown_keys(getattr(value, f.name), f"{path}.{f.name}")
        if not fields:
            for key, item in extra.items():
                found += unknown_keys(item, f"{path}[{key!r}]")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += unknown_keys(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += unknown_keys(item, f"{path}[{key!r}]")
    return found


def call(tag, operation, expect, outcome, **kwargs):
    """Calls one generated function; checks the reply as the module doc says."""
    global replies
    label = f"{tag}.{operation} ({outcome}, {kwargs.get('name', '')})"
    try:
        response = module_of(tag, operation).sync_detailed(client=client, **kwargs)
        status = int(response.status_code)
        if isinstance(expect, int) and expect >= 100:
            assert status == expect, f"status {status}, expected {expect}: {response.content[:300]!r}"
        else:
            assert status // 100 == expect, f"status {status}, expected {expect}xx: {response.content[:300]!r}"
        parsed = response.parsed
        assert parsed is not None, f"the generated client parsed nothing from {status} {response.content[:300]!r}"
        if isinstance(parsed, str):
            assert parsed == response.content.decode(), "text reply changed in parsing"
        else:
            raw = json.loads(response.content)
            problems = unknown_keys(parsed)
            assert not problems, "; ".join(problems)
            again = parsed.to_dict()
            assert again == raw, f"round trip differs:\n sent   {raw}\n parsed {again}"
            if outcome == "error":
                assert raw["code"] != 200 and raw["data"] is None, raw
            else:
                assert raw["code"] == 200, raw
        driven.setdefault((tag, operation), set()).add(outcome)
        replies += 1
        return parsed
    except Exception as e:  # every failure is collected, the run goes on
        failures.append(f"{label}: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        return None


conformance = {"checked": 0}


def conform(path, path_parameters=None, query=None):
    """schemathesis' own response checks (schema, status, content type) on a GET of a real
    object, through a schema loaded from the same document."""
    import schemathesis
    from schemathesis.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    label = f"conformance GET {path} {path_parameters or ''}"
    try:
        operation = schemathesis.openapi.from_dict(document)[path]["GET"]
        case = operation.Case(
            path_parameters=path_parameters or {},
            query=query or {},
            headers={"Authorization": f"Bearer {client.token}"},
        )
        response = case.call(base_url=base_url)
        assert response.status_code == 200, f"status {response.status_code}: {response.content[:300]!r}"
        case.validate_response(
            response,
            checks=(response_schema_conformance, status_code_conformance, content_type_conformance),
        )
        conformance["checked"] += 1
    except BaseException as e:  # schemathesis raises a group of failures, not an Exception
        if isinstance(e, KeyboardInterrupt):
            raise
        failures.append(f"{label}: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)


def body(name, value):
    return model(name).from_dict(value)


s, s2, vol, user = f"{prefix}set", f"{prefix}clone", f"{prefix}vol", f"{prefix}user"
missing = f"{prefix}missing"

call("service", "ping", 200, "success")
call("users", "whoami", 200, "success")

# Users.
call("users", "add", 200, "success", body=body("UserAddBody", {"name": user, "maxGpus": 3}))
call("users", "add", 4, "error", body=body("UserAddBody", {"name": user}))
call("users", "list", 200, "success")
call("users", "info", 200, "success", name=user)
call("users", "info", 404, "error", name=missing)
call("users", "quota", 200, "success", name=user, body=body("QuotaBody", {"maxSets": 5}))
call("users", "quota", 4, "error", name=missing, body=body("QuotaBody", {"maxSets": 5}))
call("users", "reset_token", 200, "success", name=user)
call("users", "reset_token", 404, "error", name=missing)
ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl gen@client"
added_key = call("users", "add_key", 200, "success", name=user, body=body("KeyAddBody", {"key": ssh_key}))
call("users", "add_key", 400, "error", name=user, body=body("KeyAddBody", {"key": "ssh-ed25519 nope"}))
call("users", "keys", 200, "success", name=user)
call("users", "keys", 404, "error", name=missing)
if added_key is not None:
    call("users", "remove_key", 200, "success", name=user, fingerprint=added_key.data.key.fingerprint)
call("users", "remove_key", 404, "error", name=user, fingerprint="SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
call("users", "usage", 200, "success")
call("users", "usage", 400, "error", from_="yesterday")

# Volumes.
call("volume", "create", 200, "success", body=body("VolumeCreateBody", {"name": vol, "size": "20MB"}))
call("volume", "create", 4, "error", body=body("VolumeCreateBody", {"name": vol, "size": "twenty"}))
call("volume", "list", 200, "success")
call("volume", "info", 200, "success", name=vol)
call("volume", "info", 4, "error", name=missing)
call("volume", "history", 200, "success", name=vol)
call("volume", "history", 4, "error", name=missing)

# A set with a volume, a host path, env, a port and limits.
run = {
    "imageName": image,
    "replicaSetName": s,
    "gpuCount": 1,
    "binds": [{"src": f"{vol}-1", "dest": "/data"}, {"src": host_dir, "dest": "/host"}],
    "env": ["A=1"],
    "cmd": ["sh"],
    "containerPorts": ["22", "53/udp"],
    "resources": {"memory": "256MB"},
}
call("replica_set", "run", 200, "success", body=body("RunBody", run))
call("replica_set", "run", 4, "error", body=body("RunBody", dict(run, gpuCount=-1)))
call("replica_set", "list", 200, "success")
call("replica_set", "info", 200, "success", name=s)
call("replica_set", "info", 4, "error", name=missing)
call("replica_set", "history", 200, "success", name=s)
call("replica_set", "history", 4, "error", name=missing)
call("replica_set", "execute", 200, "success", name=s,
     body=body("ExecuteBody", {"cmd": ["sh", "-c", "echo hi > /data/f"], "workDir": "/root"}))
call("replica_set", "execute", 4, "error", name=missing, body=body("ExecuteBody", {"cmd": ["true"]}))
call("replica_set", "patch", 200, "success", name=s, body=body("PatchBody", {"gpuPatch": {"gpuCount": 2}}))
call("replica_set", "patch", 4, "error", name=missing, body=body("PatchBody", {}))
call("volume", "resize", 200, "success", name=vol, body=body("VolumeSizeBody", {"size": "30MB"}))
call("volume", "resize", 4, "error", name=missing, body=body("VolumeSizeBody", {"size": "30MB"}))
call("replica_set", "rollback", 200, "success", name=s, body=body("RollbackBody", {"version": 1}))
call("replica_set", "rollback", 4, "error", name=s, body=body("RollbackBody", {"version": 99}))
call("replica_set", "restart", 200, "success", name=s)
call("replica_set", "restart", 4, "error", name=missing)
call("replica_set", "info", 200, "success", name=s)
call("replica_set", "history", 200, "success", name=s)
# The same replies through schemathesis: a set of four versions with a resized volume, a host
# path, env, ports and limits; the volume after a resize.
conform("/api/v1/replicaSet/{name}", {"name": s})
conform("/api/v1/replicaSet/{name}/history", {"name": s})
conform("/api/v1/replicaSet")
conform("/api/v1/volumes/{name}", {"name": vol})
conform("/api/v1/volumes/{name}/history", {"name": vol})
conform("/api/v1/volumes")
conform("/api/v1/resources/gpus", query={"detail": "true"})
conform("/api/v1/resources/ports")
conform("/api/v1/status")
conform("/api/v1/whoami")
conform("/api/v1/users")
conform("/api/v1/usage")
call("replica_set", "commit", 200, "success", name=s,
     body=body("CommitBody", {"newImageName": f"{prefix.lower()}commit:generated"}))
call("replica_set", "commit", 4, "error", name=s, body=body("CommitBody", {"newImageName": "Not A Name"}))
call("replica_set", "migrate", 4, "error", name=s, body=body("MigrateBody", {"node": "elsewhere"}))

# Instance routes.
call("instance", "timers", 200, "success", name=s)
call("instance", "timers", 4, "error", name=missing)
call("instance", "set_timers", 200, "success", name=s, body=body("TimersBody", {"idleStop": "1h"}))
call("instance", "set_timers", 4, "error", name=s, body=body("TimersBody", {"idleStop": "soon"}))
call("instance", "logs", 200, "success", name=s, tail=10)
call("instance", "logs", 4, "error", name=missing)
call("instance", "stats", 200, "success", name=s)
call("instance", "stats", 4, "error", name=missing)
call("instance", "services", 200, "success", name=s)
call("instance", "services", 4, "error", name=missing)
conform("/api/v1/replicaSet/{name}/services", {"name": s})
call("instance", "open_link", 200, "success", name=s, body=body("OpenBody", {"port": 8888}))
call("instance", "open_link", 4, "error", name=s, body=body("OpenBody", {"port": 0}))
call("instance", "clone", 200, "success", name=s, body=body("CloneBody", {"name": s2, "gpuCount": 0}))
call("instance", "clone", 4, "error", name=missing, body=body("CloneBody", {"name": f"{s2}b"}))
# A terminal is a WebSocket: a plain GET is refused (1000), a missing set is 1016.
call("instance", "terminal", 400, "error", name=s)
call("instance", "terminal", 4, "error", name=missing)
call("instance", "screen", 400, "error", name=s)
call("instance", "screen", 4, "error", name=missing)
call("instance", "events", 200, "success", replay=20, follow=False)
call("instance", "events", 400, "error", replay=-1, follow=False)

# Resources.
call("resource", "gpus", 200, "success")
call("resource", "gpus", 200, "success", detail=True)
call("resource", "ports", 200, "success")
call("resource", "ports", 404, "error", node="elsewhere")
call("resource", "status", 200, "success")
call("resource", "nodes", 200, "success")
call("resource", "backup", 200, "success")

# Nodes: a single host has none to cordon or drain (1000); their successes need a cluster
# (cluster.rs drives them).
call("node", "cordon", 400, "error", name="n1")
call("node", "uncordon", 400, "error", name="n1")
call("node", "drain", 400, "error", name="n1", parallel=2)
call("node", "drain_status", 400, "error", name="n1")
call("node", "cancel_drain", 400, "error", name="n1")

# State changes, then removal.
call("replica_set", "pause", 200, "success", name=s)
call("replica_set", "pause", 4, "error", name=missing)
call("replica_set", "resume", 200, "success", name=s)
call("replica_set", "resume", 4, "error", name=missing)
call("replica_set", "stop", 200, "success", name=s)
call("replica_set", "stop", 4, "error", name=missing)
call("replica_set", "info", 200, "success", name=s)
call("replica_set", "delete", 200, "success", name=s2)
call("replica_set", "delete", 200, "success", name=s)
call("replica_set", "delete", 4, "error", name=missing)
call("volume", "delete", 200, "success", name=vol)
call("volume", "delete", 4, "error", name=missing)
call("users", "remove", 200, "success", name=user)
call("users", "remove", 4, "error", name=missing)

# Errors every route may answer: a wrong token, a user where admins only.
good = client
client = AuthenticatedClient(base_url=base_url, token="grp-nobody-" + "0" * 64)
for tag, operation in [
    ("service", "ping"),  # needs no token: still a success
    ("users", "whoami"),
    ("replica_set", "list"),
    ("volume", "list"),
    ("resource", "gpus"),
    ("resource", "status"),
    ("resource", "nodes"),
]:
    if operation == "ping":
        call(tag, operation, 200, "success")
    else:
        call(tag, operation, 401, "error")
client = good
call("users", "add", 200, "success", body=body("UserAddBody", {"name": user}))
user_token = json.loads(
    module_of("users", "reset_token").sync_detailed(client=client, name=user).content
)["data"]["token"]
client = AuthenticatedClient(base_url=base_url, token=user_token)
call("users", "list", 403, "error")
call("resource", "backup", 403, "error")
call("resource", "nodes", 200, "success")
client = good
call("users", "remove", 200, "success", name=user)

# Which operations of the document were not driven both ways.
operations = set()
for path, methods in document["paths"].items():
    for method, operation in methods.items():
        operations.add((snake(operation["tags"][0]), operation["operationId"]))
successes = sum(1 for o in operations if "success" in driven.get(o, ()))
errors = sum(1 for o in operations if "error" in driven.get(o, ()))
for o in sorted(operations):
    outcomes = driven.get(o, set())
    if not outcomes:
        failures.append(f"{o[0]}.{o[1]}: never driven")

print(
    json.dumps(
        {
            "operations": len(operations),
            "driven_success": successes,
            "driven_error": errors,
            "without_success": sorted(f"{t}.{o}" for t, o in operations if "success" not in driven.get((t, o), ())),
            "without_error": sorted(f"{t}.{o}" for t, o in operations if "error" not in driven.get((t, o), ())),
            "replies_parsed": replies,
            "conformance_checked": conformance["checked"],
            "failures": failures,
        }
    )
)
sys.exit(1 if failures else 0)
