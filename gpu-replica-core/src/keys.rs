//! Where each record lives in the store. Prefixes end in '/', so `foo` never lists `foobar`.

/// Head of replicaSet `name`.
pub fn replica_set(name: &str) -> String {
    format!("replicasets/{name}")
}

/// Prefix of every replicaSet head.
pub const REPLICA_SETS: &str = "replicasets/";

/// Version `v` of replicaSet `name`; zero-padded so key order is version order.
pub fn version(name: &str, v: u32) -> String {
    format!("versions/{name}/{v:010}")
}

/// Prefix of all versions of `name`.
pub fn versions(name: &str) -> String {
    format!("versions/{name}/")
}

/// Prefix of all versions of all replicaSets.
pub const ALL_VERSIONS: &str = "versions/";

/// A copy of the current version of replicaSet `name`, written in the same transaction as the
/// version itself, so that listing every set reads two prefixes whatever the history's length.
pub fn current(name: &str) -> String {
    format!("current/{name}")
}

/// Prefix of every current-version copy.
pub const CURRENT: &str = "current/";

/// The measured size of replicaSet `name`'s writable layer ([`crate::model::RootfsUsage`]).
pub fn rootfs(name: &str) -> String {
    format!("rootfs/{name}")
}

/// Prefix of every writable-layer measurement.
pub const ROOTFS: &str = "rootfs/";

/// Claim on the GPU `uuid`; its value is the holder's name.
pub fn gpu_claim(uuid: &str) -> String {
    format!("claims/gpus/{uuid}")
}

/// Prefix of every GPU claim.
pub const GPU_CLAIMS: &str = "claims/gpus/";

/// Claim on host port `port` of `node` (empty on a single host); its value is the holder's
/// name.
pub fn port_claim(node: &str, port: u16) -> String {
    format!("{}{port:05}", port_claims(node))
}

/// Prefix of every port claim of `node` (a single host's are `claims/ports/{port}`; a
/// node's `claims/ports/@{node}/{port}`, which no single-host listing mistakes for a port).
pub fn port_claims(node: &str) -> String {
    if node.is_empty() {
        "claims/ports/".to_string()
    } else {
        format!("claims/ports/@{node}/")
    }
}

/// Node `name` of a cluster: its name, advertise URL, GPUs, port range (kept when it is lost).
pub fn node(name: &str) -> String {
    format!("nodes/{name}")
}

/// Prefix of every node.
pub const NODES: &str = "nodes/";

/// Node `name` is alive: written under a lease the node renews; gone when it stops.
pub fn node_alive(name: &str) -> String {
    format!("nodes-alive/{name}")
}

/// Prefix of every live node.
pub const NODES_ALIVE: &str = "nodes-alive/";

/// Head of volume `name`.
pub fn volume(name: &str) -> String {
    format!("volumes/{name}")
}

/// Prefix of every volume head.
pub const VOLUMES: &str = "volumes/";

/// Version `v` of volume `name`.
pub fn volume_version(name: &str, v: u32) -> String {
    format!("volume-versions/{name}/{v:010}")
}

/// Prefix of all versions of volume `name`.
pub fn volume_versions(name: &str) -> String {
    format!("volume-versions/{name}/")
}

/// The store's identity, written once by the first engine that recovers on it.
pub const STORE_ID: &str = "meta/store-id";

/// The version of the records' schema (a decimal number); see [`crate::backup::SCHEMA`].
pub const SCHEMA: &str = "meta/schema";

/// Present after a restore (the backup's header, JSON) until the next start's recovery has
/// reported it.
pub const RESTORED: &str = "meta/restored";

/// A container of this store that its records never knew, found on node `node` (empty on a
/// single host) at the first start after a restore: left alone for good.
pub fn unknown_container(node: &str, name: &str) -> String {
    format!("unknown/{node}/{name}")
}

/// The secret the nodes of a cluster authenticate their calls to each other with (made by the
/// first node that joins).
pub const CLUSTER_SECRET: &str = "meta/cluster-secret";

/// Event number `seq`; zero-padded so key order is time order.
pub fn event(seq: u64) -> String {
    format!("events/{seq:020}")
}

/// Prefix of every event.
pub const EVENTS: &str = "events/";

/// User `name`: role, quota, and the salted hash of their token.
pub fn user(name: &str) -> String {
    format!("users/{name}")
}

/// Prefix of every user.
pub const USERS: &str = "users/";

/// A counter every claim of `owner` under a quota bumps, in the claim's transaction: two
/// claims that counted the same holdings cannot both commit.
pub fn quota_guard(owner: &str) -> String {
    format!("quota-guard/{owner}")
}

/// A change of the GPU claims of the set with id `set_id`, owned by `owner`, at `at`
/// microseconds since the epoch; `unique` tells apart changes at the same microsecond.
pub fn gpu_time(owner: &str, set_id: &str, at: u64, unique: &str) -> String {
    format!("gpu-time/{owner}/{set_id}/{at:020}.{unique}")
}

/// Prefix of the GPU-time records of `owner`.
pub fn gpu_times_of(owner: &str) -> String {
    format!("gpu-time/{owner}/")
}

/// Prefix of every GPU-time record.
pub const GPU_TIMES: &str = "gpu-time/";

/// SSH public key `fingerprint` (hex of its SHA-256) of user `name`
/// ([`crate::SshKey`]).
pub fn ssh_key(name: &str, fingerprint: &str) -> String {
    format!("{}{fingerprint}", ssh_keys(name))
}

/// Prefix of every SSH public key of user `name`.
pub fn ssh_keys(name: &str) -> String {
    format!("sshkeys/{name}/")
}

/// Who holds SSH public key `fingerprint` (hex of its SHA-256): the user's name. A key is
/// one user's, so a login by key names one person.
pub fn ssh_key_holder(fingerprint: &str) -> String {
    format!("sshkey-holders/{fingerprint}")
}

/// The SSH gateway's host key (OpenSSH private key text): made once, the same on every node.
pub const SSH_HOST_KEY: &str = "ssh/host-key";

/// Where node `name`'s SSH gateway is reached, `host:port` (absent: it serves none).
pub fn node_ssh(name: &str) -> String {
    format!("nodes-ssh/{name}")
}

/// The key that signs the web-service proxy's links and cookies (64 hex digits): made once,
/// the same on every node, so a cookie one node's proxy gave is good at any node's.
pub const PROXY_KEY: &str = "proxy/key";

/// Links of the proxy already opened, by nonce (until they would have expired): a link opens
/// once, on any node, across restarts.
pub const PROXY_LINKS_OPENED: &str = "proxy-links/";

/// The record that link nonce `nonce` was opened.
pub fn proxy_link_opened(nonce: &str) -> String {
    format!("{PROXY_LINKS_OPENED}{nonce}")
}
