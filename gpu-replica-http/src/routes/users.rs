//! `/api/v1/users…`, `/api/v1/whoami` and `/api/v1/usage` (beyond the contract).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use gpu_replica_core::UsageQuery;

use super::Reply;
use crate::auth::Acting;
use crate::envelope::{ok, Body};
#[allow(unused_imports)]
use crate::envelope::{Envelope, ErrorReply, NoData};
use crate::wire::{
    parse_instant, KeyAddBody, KeyList, KeyReply, PurgedReply, QuotaBody, RemoveQuery, TokenReply,
    UsageQueryParams, UsageReply, UserAddBody, UserList, UserReply, UserTokenReply, UserView,
    WhoamiReply,
};

/// Add a user (admins); the answer carries their token, shown this once.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = UserAddBody,
    responses((status = 200, body = Envelope<UserTokenReply>), (status = "4XX", body = ErrorReply, description = "1000, 1029, 1049 (not an admin), 1052 (exists)")))]
pub async fn add(Acting(engine): Acting, Body(body): Body<UserAddBody>) -> Reply<UserTokenReply> {
    let (user, token) = engine.add_user(body.to_new_user()?).await?;
    Ok(ok(UserTokenReply {
        user: UserView::from(&user),
        token,
    }))
}

/// Every user with quota and holdings (admins).
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Envelope<UserList>), (status = 403, body = ErrorReply, description = "1049")))]
pub async fn list(Acting(engine): Acting) -> Reply<UserList> {
    let users = engine.users().await?;
    Ok(ok(UserList {
        users: users.iter().map(UserView::from).collect(),
    }))
}

/// One user (admins; a user may ask for themselves).
#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = Envelope<UserReply>), (status = 404, body = ErrorReply, description = "1051")))]
pub async fn info(Acting(engine): Acting, Path(name): Path<String>) -> Reply<UserReply> {
    let user = engine.user_info(&name).await?;
    Ok(ok(UserReply {
        user: UserView::from(&user),
    }))
}

/// Remove a user (admins); refused while they own replicaSets or volumes, unless
/// `purge=true`: then their sets and volumes are deleted first (their token stops working at
/// once), and the answer names them.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "User name"),
        ("purge" = Option<bool>, Query, description = "Delete their replicaSets and volumes too")),
    responses((status = 200, body = Envelope<PurgedReply>), (status = "4XX", body = ErrorReply, description = "1000, 1049, 1051, 1053 (still owns objects)")))]
pub async fn remove(
    Acting(engine): Acting,
    Path(name): Path<String>,
    query: Result<Query<RemoveQuery>, QueryRejection>,
) -> Reply<PurgedReply> {
    let Query(query) = query?;
    let purged = if query.purge {
        engine.purge_user(&name).await?
    } else {
        engine.remove_user(&name).await?;
        Default::default()
    };
    Ok(ok(PurgedReply::from(purged)))
}

/// A new token for the user (admins, or the user themselves); the old one stops working.
#[utoipa::path(post, path = "/api/v1/users/{name}/token", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = Envelope<TokenReply>), (status = 404, body = ErrorReply, description = "1051")))]
pub async fn reset_token(Acting(engine): Acting, Path(name): Path<String>) -> Reply<TokenReply> {
    let token = engine.reset_token(&name).await?;
    Ok(ok(TokenReply { token }))
}

/// A user's SSH public keys (admins; a user may ask for their own), oldest first.
#[utoipa::path(get, path = "/api/v1/users/{name}/keys", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = Envelope<KeyList>), (status = "4XX", body = ErrorReply, description = "1051")))]
pub async fn keys(Acting(engine): Acting, Path(name): Path<String>) -> Reply<KeyList> {
    let keys = engine.ssh_keys(&name).await?;
    Ok(ok(KeyList {
        keys: keys.into_iter().map(Into::into).collect(),
    }))
}

/// Add an SSH public key (admins; a user to themselves): `ssh -p PORT SET@host` then logs in
/// to the user's sets with it. A key another user holds is refused (1008).
#[utoipa::path(post, path = "/api/v1/users/{name}/keys", tag = "users", request_body = KeyAddBody,
    params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = Envelope<KeyReply>), (status = "4XX", body = ErrorReply, description = "1000 (not a key), 1048 (too many keys), 1051, 1061 (another user's key)")))]
pub async fn add_key(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<KeyAddBody>,
) -> Reply<KeyReply> {
    let key = engine.add_ssh_key(&name, &body.key).await?;
    Ok(ok(KeyReply { key: key.into() }))
}

/// Remove an SSH public key by its fingerprint (`SHA256:…`, percent-encoded).
#[utoipa::path(delete, path = "/api/v1/users/{name}/keys/{fingerprint}", tag = "users",
    params(("name" = String, Path, description = "User name"),
        ("fingerprint" = String, Path, description = "The key's fingerprint, `SHA256:…`")),
    responses((status = 200, body = NoData), (status = "4XX", body = ErrorReply, description = "1051, 1060 (no such key)")))]
pub async fn remove_key(
    Acting(engine): Acting,
    Path((name, fingerprint)): Path<(String, String)>,
) -> Reply<()> {
    engine.remove_ssh_key(&name, &fingerprint).await?;
    Ok(ok(()))
}

/// Change a user's limits (admins): fields left out stay, `null` removes a limit.
#[utoipa::path(patch, path = "/api/v1/users/{name}/quota", tag = "users", request_body = Option<QuotaBody>,
    params(("name" = String, Path, description = "User name")),
    responses((status = 200, body = Envelope<UserReply>), (status = "4XX", body = ErrorReply, description = "1000, 1029, 1049, 1051")))]
pub async fn quota(
    Acting(engine): Acting,
    Path(name): Path<String>,
    Body(body): Body<QuotaBody>,
) -> Reply<UserReply> {
    let user = engine.set_quota(&name, body.to_change()?).await?;
    Ok(ok(UserReply {
        user: UserView::from(&user),
    }))
}

/// Who the token belongs to, with quota and holdings.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "users",
    responses((status = 200, body = Envelope<WhoamiReply>)))]
pub async fn whoami(Acting(engine): Acting) -> Reply<WhoamiReply> {
    let name = engine.caller().name.clone();
    let user = engine.user_info(&name).await?;
    Ok(ok(WhoamiReply {
        user: UserView::from(&user),
    }))
}

/// GPU-seconds per user and per replicaSet over a period (a user sees their own).
#[utoipa::path(get, path = "/api/v1/usage", tag = "users",
    params(UsageQueryParams),
    responses((status = 200, body = Envelope<UsageReply>), (status = 400, body = ErrorReply, description = "1000: a time not understood, or to before from")))]
pub async fn usage(
    Acting(engine): Acting,
    query: Result<Query<UsageQueryParams>, QueryRejection>,
) -> Reply<UsageReply> {
    let Query(params) = query?;
    let report = engine
        .usage(UsageQuery {
            // An empty value is no value: `?from=&to=` is the whole time.
            from: params
                .from
                .as_deref()
                .filter(|t| !t.trim().is_empty())
                .map(|t| parse_instant("from", t))
                .transpose()?,
            to: params
                .to
                .as_deref()
                .filter(|t| !t.trim().is_empty())
                .map(|t| parse_instant("to", t))
                .transpose()?,
            owner: params.owner,
        })
        .await?;
    Ok(ok(UsageReply::from(&report)))
}
