//! Bodies of the routes beyond the contract that share one server among users: accounts,
//! quotas and the GPU-time report.

use gpu_replica_core::{
    parse_size, Error, Holdings, NewUser, Quota, QuotaChange, Role, SshKey, UsageReport, UserInfo,
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// `POST /api/v1/users`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAddBody {
    /// Name, `[A-Za-z0-9][A-Za-z0-9_.]*`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.]*$", max_length = 128)]
    pub name: String,
    /// An admin sees and acts on everything and manages users (default false).
    #[serde(default)]
    pub admin: bool,
    /// GPUs held at once (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpus: Option<u32>,
    /// ReplicaSets (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sets: Option<u32>,
    /// Total size of volumes, `500GB` (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^\s*0*[1-9][0-9]{0,5}\s*([KkMmGgTt][Bb])\s*$")]
    pub max_volume_size: Option<String>,
    /// Total disk: volumes and root filesystems' writable layers, `1TB` (default: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^\s*0*[1-9][0-9]{0,5}\s*([KkMmGgTt][Bb])\s*$")]
    pub max_disk_size: Option<String>,
}

/// A count limit as the document declares it (a 32-bit integer, not negative).
fn count(what: &str, value: Option<u32>) -> Result<Option<u32>, Error> {
    match value {
        Some(v) if v > i32::MAX as u32 => Err(Error::InvalidParams(format!(
            "{what} {v} is larger than {}",
            i32::MAX
        ))),
        other => Ok(other),
    }
}

impl UserAddBody {
    /// The core's request.
    pub fn to_new_user(&self) -> Result<NewUser, Error> {
        Ok(NewUser {
            name: self.name.clone(),
            admin: self.admin,
            quota: Quota {
                max_gpus: count("maxGpus", self.max_gpus)?,
                max_sets: count("maxSets", self.max_sets)?,
                max_volume_bytes: self
                    .max_volume_size
                    .as_deref()
                    .map(parse_size)
                    .transpose()?,
                max_disk_bytes: self.max_disk_size.as_deref().map(parse_size).transpose()?,
            },
        })
    }
}

/// `PATCH /api/v1/users/{name}/quota`: a field left out stays as it is, `null` removes the
/// limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaBody {
    /// GPUs held at once.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u32>)]
    pub max_gpus: Option<Option<u32>>,
    /// ReplicaSets.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<u32>)]
    pub max_sets: Option<Option<u32>>,
    /// Total size of volumes, `500GB`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, pattern = r"^\s*0*[1-9][0-9]{0,5}\s*([KkMmGgTt][Bb])\s*$")]
    pub max_volume_size: Option<Option<String>>,
    /// Total disk: volumes and root filesystems' writable layers, `1TB`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, pattern = r"^\s*0*[1-9][0-9]{0,5}\s*([KkMmGgTt][Bb])\s*$")]
    pub max_disk_size: Option<Option<String>>,
}

/// A size limit change: absent, `null` (no limit) or a size.
fn size_change(value: &Option<Option<String>>) -> Result<Option<Option<u64>>, Error> {
    Ok(match value {
        None => None,
        Some(None) => Some(None),
        Some(Some(size)) => Some(Some(parse_size(size)?)),
    })
}

impl QuotaBody {
    /// The core's change.
    pub fn to_change(&self) -> Result<QuotaChange, Error> {
        Ok(QuotaChange {
            max_gpus: self.max_gpus.map(|v| count("maxGpus", v)).transpose()?,
            max_sets: self.max_sets.map(|v| count("maxSets", v)).transpose()?,
            max_volume_bytes: size_change(&self.max_volume_size)?,
            max_disk_bytes: size_change(&self.max_disk_size)?,
        })
    }
}

/// A user's limits; a missing field is no limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaView {
    /// GPUs held at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpus: Option<u32>,
    /// ReplicaSets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sets: Option<u32>,
    /// Total bytes of volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_volume_bytes: Option<u64>,
    /// Total bytes of disk: volumes and root filesystems' writable layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_bytes: Option<u64>,
}

/// What a user holds now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldingsView {
    /// GPUs claimed by their replicaSets.
    pub gpus: u32,
    /// Their replicaSets.
    pub sets: u32,
    /// Bytes of their volumes.
    pub volume_bytes: u64,
    /// Bytes their sets' containers wrote on top of their images, as last measured.
    #[serde(default)]
    pub rootfs_bytes: u64,
}

/// One user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// Name.
    pub name: String,
    /// `admin` or `user`.
    pub role: String,
    /// Limits.
    pub quota: QuotaView,
    /// What they hold now.
    pub holdings: HoldingsView,
    /// When they were added (empty for the built-in admin).
    pub create_time: String,
}

impl From<&UserInfo> for UserView {
    fn from(user: &UserInfo) -> UserView {
        let Quota {
            max_gpus,
            max_sets,
            max_volume_bytes,
            max_disk_bytes,
        } = user.quota;
        let Holdings {
            gpus,
            sets,
            volume_bytes,
            rootfs_bytes,
        } = user.holdings;
        UserView {
            name: user.name.clone(),
            role: match user.role {
                Role::Admin => "admin".into(),
                Role::User => "user".into(),
            },
            quota: QuotaView {
                max_gpus,
                max_sets,
                max_volume_bytes,
                max_disk_bytes,
            },
            holdings: HoldingsView {
                gpus,
                sets,
                volume_bytes,
                rootfs_bytes,
            },
            create_time: user.created_at.clone(),
        }
    }
}

/// `{user}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserReply {
    /// The user.
    pub user: UserView,
}

/// `{user, token}`: the token is shown here once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserTokenReply {
    /// The user.
    pub user: UserView,
    /// Their token: `Authorization: Bearer <token>`.
    pub token: String,
}

/// `{token}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenReply {
    /// The new token; the old one no longer works.
    pub token: String,
}

/// `POST /api/v1/users/{name}/keys`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct KeyAddBody {
    /// One line of a `.pub` file: type, base64 key, optional comment.
    #[schema(example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... alice@laptop")]
    pub key: String,
}

/// An SSH public key of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SshKeyView {
    /// `SHA256:` and the unpadded base64 of its SHA-256, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// Key type, e.g. `ssh-ed25519`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its comment; may be empty.
    pub comment: String,
    /// The whole key as one `authorized_keys` line.
    pub key: String,
    /// When it was added, `YYYY-MM-DD HH:MM:SS` UTC.
    pub added_at: String,
}

impl From<SshKey> for SshKeyView {
    fn from(key: SshKey) -> SshKeyView {
        SshKeyView {
            fingerprint: key.fingerprint,
            kind: key.kind,
            comment: key.comment,
            key: key.key,
            added_at: key.added_at,
        }
    }
}

/// `{keys: [...]}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Oldest first.
    pub keys: Vec<SshKeyView>,
}

/// `{key}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyReply {
    /// The key as kept.
    pub key: SshKeyView,
}

/// `?purge=true` on a user's removal.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct RemoveQuery {
    /// Delete their replicaSets and volumes too.
    #[serde(default)]
    pub purge: bool,
}

/// `{replicaSets, volumes}`: what was deleted with the account (empty without `purge`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PurgedReply {
    /// The replicaSets deleted, with their containers, snapshots and claims.
    pub replica_sets: Vec<String>,
    /// The volumes deleted.
    pub volumes: Vec<String>,
}

impl From<gpu_replica_core::Purged> for PurgedReply {
    fn from(purged: gpu_replica_core::Purged) -> PurgedReply {
        PurgedReply {
            replica_sets: purged.replica_sets,
            volumes: purged.volumes,
        }
    }
}

/// `{users}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    /// Every user, by name.
    pub users: Vec<UserView>,
}

/// `?owner=NAME` on lists (admins; a user sees only their own anyway).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct OwnerQuery {
    /// Only this user's objects.
    pub owner: Option<String>,
    /// Only the sets of this cluster node.
    pub node: Option<String>,
}

/// `?node=`
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct NodeQuery {
    /// A cluster node.
    pub node: Option<String>,
}

/// One node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// `ready` (renewing its lease) or `lost`.
    pub state: String,
    /// Where other nodes reach it.
    pub advertise: String,
    /// Its GPUs.
    pub gpus: usize,
    /// GPUs no set holds.
    pub free_gpus: usize,
    /// Sets living on it.
    pub sets: usize,
    /// Host ports it hands out.
    pub port_range: String,
    /// Its Docker engine.
    pub docker: String,
    /// When it last joined.
    pub joined_at: String,
    /// Cordoned: it takes no new sets.
    #[serde(default)]
    pub cordoned: bool,
    /// Its last drain's state (`running`, `finished`, `cancelled`), if it was drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
}

impl From<&gpu_replica_core::cluster::NodeStatus> for NodeView {
    fn from(status: &gpu_replica_core::cluster::NodeStatus) -> NodeView {
        NodeView {
            name: status.node.name.clone(),
            state: match status.state {
                gpu_replica_core::cluster::NodeState::Ready => "ready".into(),
                gpu_replica_core::cluster::NodeState::Lost => "lost".into(),
            },
            advertise: status.node.advertise.clone(),
            gpus: status.node.gpus.len(),
            free_gpus: status.free_gpus,
            sets: status.sets,
            port_range: status.node.port_range.to_string(),
            docker: status.node.docker.clone(),
            joined_at: status.node.joined_at.clone(),
            cordoned: status.node.cordoned,
            drain: status
                .node
                .drain
                .as_ref()
                .map(|d| super::nodes::drain_state_word(d.state).to_string()),
        }
    }
}

/// `{nodes}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// Every node, by name (none on a single host).
    pub nodes: Vec<NodeView>,
}

/// `?from=&to=&owner=` of `GET /api/v1/usage`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQueryParams {
    /// Start: RFC 3339 (`2026-11-01T00:00:00Z`) or seconds since the epoch (default: the
    /// beginning).
    #[param(
        pattern = r"^(|[0-9]{1,11}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z)$"
    )]
    pub from: Option<String>,
    /// End, the same forms (default: now).
    #[param(
        pattern = r"^(|[0-9]{1,11}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z)$"
    )]
    pub to: Option<String>,
    /// Only this user's (admins).
    pub owner: Option<String>,
}

/// A time as RFC 3339 or seconds since the epoch.
pub fn parse_instant(what: &str, text: &str) -> Result<i64, Error> {
    if let Ok(secs) = text.trim().parse::<i64>() {
        return Ok(secs);
    }
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            Error::InvalidParams(format!(
                "{what} '{text}' is neither RFC 3339 (2026-11-01T00:00:00Z) nor seconds since 1970"
            ))
        })
}

/// GPU-time of one replicaSet.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetUsageView {
    /// Its owner.
    pub owner: String,
    /// Its name (a deleted set keeps its line).
    pub replica_set: String,
    /// Its immutable id (a name used again is another set).
    pub id: String,
    /// GPU-seconds in the period.
    pub gpu_seconds: f64,
    /// GPU-hours in the period.
    pub gpu_hours: f64,
    /// GPUs it holds at the end of the period.
    pub gpus_at_end: i64,
}

/// GPU-time of one user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserUsageView {
    /// The user.
    pub owner: String,
    /// GPU-seconds in the period.
    pub gpu_seconds: f64,
    /// GPU-hours in the period.
    pub gpu_hours: f64,
}

/// `{from, to, users, replicaSets}`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReply {
    /// Start of the period, RFC 3339.
    pub from: String,
    /// End of the period, RFC 3339.
    pub to: String,
    /// Per user.
    pub users: Vec<UserUsageView>,
    /// Per replicaSet.
    pub replica_sets: Vec<SetUsageView>,
}

impl From<&UsageReport> for UsageReply {
    fn from(report: &UsageReport) -> UsageReply {
        UsageReply {
            from: gpu_replica_core::model::rfc3339(report.from),
            to: gpu_replica_core::model::rfc3339(report.to),
            users: report
                .users
                .iter()
                .map(|u| UserUsageView {
                    owner: u.owner.clone(),
                    gpu_seconds: u.gpu_seconds,
                    gpu_hours: u.gpu_seconds / 3600.0,
                })
                .collect(),
            replica_sets: report
                .replica_sets
                .iter()
                .map(|s| SetUsageView {
                    owner: s.owner.clone(),
                    replica_set: s.replica_set.clone(),
                    id: s.id.clone(),
                    gpu_seconds: s.gpu_seconds,
                    gpu_hours: s.gpu_seconds / 3600.0,
                    gpus_at_end: s.gpus_at_end,
                })
                .collect(),
        }
    }
}

/// `{name, role}` of `GET /api/v1/whoami`, with quota and holdings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoamiReply {
    /// Who the token belongs to.
    pub user: UserView,
}
