//! etcd store (cargo feature `etcd`): for several engines sharing one cluster.
//!
//! Revisions are etcd's own `mod_revision`; an absent key is `create_revision == 0`, which is
//! how etcd itself spells "does not exist" inside a transaction.

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn as EtcdTxn, TxnOp};

use super::{Condition, Entry, StateStore, Txn, Write};
use crate::error::{Error, Result};

/// A [`StateStore`] on an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
}

fn store_err(e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    use tonic::Code;
    match &e {
        E::TransportError(_) | E::IoError(_) => Error::Unavailable(format!("etcd ({e})")),
        E::GRpcStatus(status)
            if matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            ) =>
        {
            Error::Unavailable(format!("etcd ({})", status.message()))
        }
        _ => Error::Store(format!("etcd: {e}")),
    }
}

/// How to reach a secured etcd: TLS (with a client certificate) and a user.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    /// CA certificate(s), PEM, of the etcd servers: the connection uses TLS when given.
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key, PEM, for an etcd with `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// User name and password, for an etcd with authentication enabled.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("tls", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish()
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://host:port`); every key is stored under `prefix`, so
    /// several deployments (or test runs) can share one cluster.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore> {
        EtcdStore::connect_with(endpoints, prefix, &EtcdAccess::default()).await
    }

    /// Connects to a secured etcd (`https://host:port` endpoints with TLS).
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        access: &EtcdAccess,
    ) -> Result<EtcdStore> {
        // Bounded waits: a request to an etcd that is gone fails in seconds with a clear error
        // instead of hanging; the channel reconnects by itself when etcd is back.
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(3))
            .with_timeout(std::time::Duration::from_secs(5));
        if let Some(ca) = &access.ca {
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca));
            if let Some((cert, key)) = &access.identity {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        if let Some((name, password)) = &access.user {
            options = options.with_user(name.clone(), password.clone());
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(store_err)?;
        Ok(EtcdStore {
            client,
            endpoints: endpoints.to_vec(),
            prefix: prefix.to_string(),
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn entry(&self, kv: &etcd_client::KeyValue) -> Result<Entry> {
        let key = kv
            .key_str()
            .map_err(|e| Error::Store(format!("etcd: {e}")))?;
        Ok(Entry {
            key: key.strip_prefix(&self.prefix).unwrap_or(key).to_string(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision() as u64,
        })
    }
}

/// Whether a call failed before its request left (no connection to the member it was sent
/// to): then it is safe to send again, and the balanced channel tries another member.
fn not_sent(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => e.to_string().contains("connect"),
        // tonic reports a refused connection as status Unavailable.
        E::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && status.message().contains("connect")
        }
        _ => false,
    }
}

/// Whether a read may simply be asked again: it could not connect, or the cluster was
/// electing a leader.
fn read_again(e: &etcd_client::Error) -> bool {
    not_sent(e)
        || matches!(e, etcd_client::Error::GRpcStatus(status)
            if status.code() == tonic::Code::Unavailable && status.message().contains("leader"))
}

/// Runs `call` again, up to 8 times 25 ms apart, while it could not reach a member: with one
/// member of a cluster down, the requests sent its way go to the others.
async fn retrying<T, F, Fut>(call: F) -> std::result::Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    retrying_when(not_sent, call).await
}

/// Like [`retrying`], for reads, which may also be asked again after a leader change.
async fn reading<T, F, Fut>(call: F) -> std::result::Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    retrying_when(read_again, call).await
}

async fn retrying_when<T, F, Fut>(
    again: fn(&etcd_client::Error) -> bool,
    mut call: F,
) -> std::result::Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(e) if tries < 8 && again(&e) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            other => return other,
        }
    }
}

#[async_trait]
impl StateStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let key = self.full(key);
        let response = reading(|| {
            let mut kv = self.client.kv_client();
            let key = key.clone();
            async move { kv.get(key, None).await }
        })
        .await
        .map_err(store_err)?;
        response.kvs().first().map(|kv| self.entry(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let prefix = self.full(prefix);
        let response = reading(|| {
            let mut kv = self.client.kv_client();
            let prefix = prefix.clone();
            async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await
        .map_err(store_err)?;
        response.kvs().iter().map(|kv| self.entry(kv)).collect()
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64> {
        let key = self.full(key);
        let response = retrying(|| {
            let mut kv = self.client.kv_client();
            let (key, value) = (key.clone(), value.clone());
            async move { kv.put(key, value, None).await }
        })
        .await
        .map_err(store_err)?;
        let revision = response.header().map(|h| h.revision()).unwrap_or_default();
        Ok(revision as u64)
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, ttl: std::time::Duration) -> Result<u64> {
        let granted = retrying(|| {
            let mut lease = self.client.lease_client();
            async move { lease.grant(ttl.as_secs().max(1) as i64, None).await }
        })
        .await
        .map_err(store_err)?;
        let key = self.full(key);
        retrying(|| {
            let mut kv = self.client.kv_client();
            let (key, value) = (key.clone(), value.clone());
            let options = etcd_client::PutOptions::new().with_lease(granted.id());
            async move { kv.put(key, value, Some(options)).await }
        })
        .await
        .map_err(store_err)?;
        Ok(granted.id() as u64)
    }

    async fn renew(&self, lease: u64) -> Result<bool> {
        let (mut keeper, mut answers) = retrying(|| {
            let mut client = self.client.lease_client();
            async move { client.keep_alive(lease as i64).await }
        })
        .await
        .map_err(store_err)?;
        keeper.keep_alive().await.map_err(store_err)?;
        match answers.message().await.map_err(store_err)? {
            Some(answer) => Ok(answer.ttl() > 0),
            None => Ok(false),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = self.full(key);
        let response = retrying(|| {
            let mut kv = self.client.kv_client();
            let key = key.clone();
            async move { kv.delete(key, None).await }
        })
        .await
        .map_err(store_err)?;
        Ok(response.deleted() > 0)
    }

    async fn commit(&self, txn: Txn) -> Result<bool> {
        let compares: Vec<Compare> = txn
            .conditions
            .iter()
            .map(|condition| match condition {
                Condition::Absent(key) => {
                    Compare::create_revision(self.full(key), CompareOp::Equal, 0)
                }
                Condition::Revision(key, revision) => {
                    Compare::mod_revision(self.full(key), CompareOp::Equal, *revision as i64)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .writes
            .into_iter()
            .map(|write| match write {
                Write::Put(key, value) => TxnOp::put(self.full(&key), value, None),
                Write::Delete(key) => TxnOp::delete(self.full(&key), None),
            })
            .collect();
        let txn = EtcdTxn::new().when(compares).and_then(ops);
        let response = retrying(|| {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(store_err)?;
        Ok(response.succeeded())
    }

    fn describe(&self) -> String {
        format!("etcd {} (prefix {})", self.endpoints.join(","), self.prefix)
    }
}
