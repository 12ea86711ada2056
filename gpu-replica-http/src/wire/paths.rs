//! Every route of the API, once: the router is built from these patterns and the client fills
//! them in ([`fill`]), so the two cannot drift (a test also holds `/openapi.json` to them).

/// `GET` liveness.
pub const PING: &str = "/ping";
/// `POST` run, `GET` list.
pub const REPLICA_SETS: &str = "/api/v1/replicaSet";
/// `GET` info, `PATCH` patch, `DELETE` delete.
pub const REPLICA_SET: &str = "/api/v1/replicaSet/{name}";
/// `POST` commit.
pub const COMMIT: &str = "/api/v1/replicaSet/{name}/commit";
/// `POST` execute.
pub const EXECUTE: &str = "/api/v1/replicaSet/{name}/execute";
/// `PATCH` rollback.
pub const ROLLBACK: &str = "/api/v1/replicaSet/{name}/rollback";
/// `PATCH` stop.
pub const STOP: &str = "/api/v1/replicaSet/{name}/stop";
/// `PATCH` pause.
pub const PAUSE: &str = "/api/v1/replicaSet/{name}/pause";
/// `PATCH` continue.
pub const CONTINUE: &str = "/api/v1/replicaSet/{name}/continue";
/// `PATCH` restart.
pub const RESTART: &str = "/api/v1/replicaSet/{name}/restart";
/// `GET` history.
pub const HISTORY: &str = "/api/v1/replicaSet/{name}/history";
/// `POST` migrate.
pub const MIGRATE: &str = "/api/v1/replicaSet/{name}/migrate";
/// `GET`, `PUT` timers.
pub const TIMERS: &str = "/api/v1/replicaSet/{name}/timers";
/// `POST` clone.
pub const CLONE: &str = "/api/v1/replicaSet/{name}/clone";
/// `GET` logs.
pub const LOGS: &str = "/api/v1/replicaSet/{name}/logs";
/// `GET` stats.
pub const STATS: &str = "/api/v1/replicaSet/{name}/stats";
/// `GET` the event stream.
pub const EVENTS: &str = "/api/v1/events";
/// `POST` create, `GET` list.
pub const VOLUMES: &str = "/api/v1/volumes";
/// `GET` info, `DELETE` delete.
pub const VOLUME: &str = "/api/v1/volumes/{name}";
/// `PATCH` resize.
pub const VOLUME_SIZE: &str = "/api/v1/volumes/{name}/size";
/// `GET` a volume's history.
pub const VOLUME_HISTORY: &str = "/api/v1/volumes/{name}/history";
/// `GET` GPU status.
pub const GPUS: &str = "/api/v1/resources/gpus";
/// `GET` port status.
pub const PORTS: &str = "/api/v1/resources/ports";
/// `GET` the last recovery.
pub const STATUS: &str = "/api/v1/status";
/// A backup of the state store (admins only).
pub const BACKUP: &str = "/api/v1/backup";
/// `POST` add, `GET` list.
pub const USERS: &str = "/api/v1/users";
/// `GET` info, `DELETE` remove.
pub const USER: &str = "/api/v1/users/{name}";
/// `POST` a new token.
pub const USER_TOKEN: &str = "/api/v1/users/{name}/token";
/// `PATCH` a quota.
pub const USER_QUOTA: &str = "/api/v1/users/{name}/quota";
/// `GET` a user's SSH public keys, `POST` one more.
pub const USER_KEYS: &str = "/api/v1/users/{name}/keys";
/// `DELETE` one SSH public key, by its fingerprint (`SHA256:…`, percent-encoded).
pub const USER_KEY: &str = "/api/v1/users/{name}/keys/{fingerprint}";
/// `GET` (a WebSocket) an interactive program in the set.
pub const TERMINAL: &str = "/api/v1/replicaSet/{name}/terminal";
/// `GET` (a WebSocket) the console's web terminal, emulated on the server.
pub const SCREEN: &str = "/api/v1/replicaSet/{name}/screen";
/// A link that opens a set's web service through the proxy.
pub const OPEN: &str = "/api/v1/replicaSet/{name}/open";
/// A set's TCP ports: published, listening, answering HTTP.
pub const SERVICES: &str = "/api/v1/replicaSet/{name}/services";
/// `GET` who the token is.
pub const WHOAMI: &str = "/api/v1/whoami";
/// `GET` the cluster's nodes.
pub const NODES: &str = "/api/v1/nodes";
/// `PATCH` cordon a node.
pub const NODE_CORDON: &str = "/api/v1/nodes/{name}/cordon";
/// `PATCH` uncordon a node (cancels its drain).
pub const NODE_UNCORDON: &str = "/api/v1/nodes/{name}/uncordon";
/// `POST` start draining a node (served by that node), `GET` its drain, `DELETE` cancel it.
pub const NODE_DRAIN: &str = "/api/v1/nodes/{name}/drain";
/// `GET` GPU-time.
pub const USAGE: &str = "/api/v1/usage";

/// Every route pattern of the API.
pub const ALL: &[&str] = &[
    PING,
    REPLICA_SETS,
    REPLICA_SET,
    COMMIT,
    EXECUTE,
    ROLLBACK,
    STOP,
    PAUSE,
    CONTINUE,
    RESTART,
    HISTORY,
    MIGRATE,
    TIMERS,
    CLONE,
    LOGS,
    STATS,
    TERMINAL,
    SCREEN,
    OPEN,
    SERVICES,
    EVENTS,
    VOLUMES,
    VOLUME,
    VOLUME_SIZE,
    VOLUME_HISTORY,
    GPUS,
    PORTS,
    STATUS,
    BACKUP,
    USERS,
    USER,
    USER_TOKEN,
    USER_QUOTA,
    USER_KEYS,
    USER_KEY,
    WHOAMI,
    NODES,
    NODE_CORDON,
    NODE_UNCORDON,
    NODE_DRAIN,
    USAGE,
];

/// `pattern` with its `{name}` replaced by `name`, percent-encoded.
pub fn fill(pattern: &str, name: &str) -> String {
    pattern.replace("{name}", &encode(name))
}

/// `value` with every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) percent-encoded:
/// safe in a path segment and in a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_filled_in_encoded() {
        assert_eq!(
            fill(REPLICA_SET, "foo.bar_1"),
            "/api/v1/replicaSet/foo.bar_1"
        );
        assert_eq!(fill(USER, "a/b c"), "/api/v1/users/a%2Fb%20c");
        assert_eq!(
            encode("2026-11-30T00:00:00+01:00"),
            "2026-11-30T00%3A00%3A00%2B01%3A00"
        );
    }

    #[test]
    fn the_document_lists_exactly_these_paths() {
        let documented: std::collections::BTreeSet<String> =
            crate::openapi::spec().paths.paths.keys().cloned().collect();
        let table: std::collections::BTreeSet<String> = ALL.iter().map(|p| p.to_string()).collect();
        assert_eq!(documented, table);
    }
}
