//! etcd through `etcd-client` — the only module that imports it. Reads, guarded transactions,
//! the watch, and the ack lease, each retried across the configured endpoints with bounded
//! backoff, because etcd-client does not fail over between endpoints by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bulwark_proto::backoff::Backoff;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::time::Instant;

use super::plain::{
    Commit, Entry, Listing, Read, ReadResult, StoreError, WatchEvent, WatchMessage, WritePlan,
};

/// Responses this large are legitimate (a listing of many resources with their history);
/// etcd-client's default of 4 MiB is not enough for a big mesh.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The most one operation may take, all retries included.
    pub op_timeout: Duration,
    /// The most one TCP connect may take.
    pub connect_timeout: Duration,
    /// TLS to etcd (`https://` endpoints): the CA that signed etcd's certificate, and this
    /// replica's client certificate for etcd's `--client-cert-auth`.
    pub tls: Option<EtcdTls>,
}

/// TLS towards etcd, as PEM.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: Vec<u8>,
    /// Certificate (with its chain) and key, when etcd asks clients for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            op_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

struct Endpoint {
    url: String,
    client: Client,
}

/// etcd, reached through one client per endpoint: an operation goes to the endpoint that
/// answered last and moves to the next one when that endpoint is unavailable.
/// Told of every etcd call: its operation (`read`, `transaction`, `lease-grant`, …), its result
/// (`ok`, `unavailable`, `refused`) and how long it took, retries included.
pub type CallObserver = Arc<dyn Fn(&str, &'static str, Duration) + Send + Sync>;

pub struct EtcdStore {
    endpoints: Vec<Endpoint>,
    observer: Option<CallObserver>,
    /// Index into `endpoints` of the one to try first.
    current: AtomicUsize,
    /// The endpoints as the operator gave them, for error messages.
    described: String,
    options: StoreOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.described)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Prepares clients for `endpoints`; connections are made lazily, so this succeeds while
    /// etcd is down (the control plane starts and serves what it can, and catches up).
    pub async fn connect(endpoints: &[String], options: StoreOptions) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Config("no etcd endpoints given".into()));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            // Finds a dead peer behind a silent network (no RST) while a watch is idle.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &options.tls {
            let mut config = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.client {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        let mut clients = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            match (url.starts_with("https://"), options.tls.is_some()) {
                (false, true) => {
                    return Err(StoreError::Config(format!(
                        "endpoint {url:?}: with --etcd-ca, etcd is reached over TLS: write https://"
                    )));
                }
                (true, false) => {
                    return Err(StoreError::Config(format!(
                        "endpoint {url:?}: an https:// endpoint needs --etcd-ca (the CA that signed etcd's certificate)"
                    )));
                }
                _ => {}
            }
            let client = Client::connect([url.as_str()], Some(connect.clone()))
                .await
                .map_err(|e| StoreError::Config(format!("endpoint {url:?}: {e}")))?;
            clients.push(Endpoint {
                url: url.clone(),
                client,
            });
        }
        Ok(EtcdStore {
            endpoints: clients,
            observer: None,
            current: AtomicUsize::new(0),
            described: endpoints.join(","),
            options,
        })
    }

    /// With `observer` told of every call.
    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The endpoints, comma-separated, as error messages name them.
    pub fn endpoints(&self) -> &str {
        &self.described
    }

    /// Runs `call` against the current endpoint, moving to the next endpoint and backing off
    /// while etcd is unavailable, until it succeeds, fails for another reason, or the
    /// operation's time is up.
    async fn call<T, F, Fut>(&self, operation: &'static str, call: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let result = self.call_retrying(operation, call).await;
        if let Some(observe) = &self.observer {
            // `a lease grant` → `lease-grant`.
            let name = operation
                .trim_start_matches("an ")
                .trim_start_matches("a ")
                .replace(' ', "-");
            let outcome = match &result {
                Ok(_) => "ok",
                Err(StoreError::Unavailable { .. }) => "unavailable",
                Err(_) => "refused",
            };
            observe(&name, outcome, started.elapsed());
        }
        result
    }

    async fn call_retrying<T, F, Fut>(
        &self,
        operation: &'static str,
        mut call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.options.op_timeout;
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        // Each endpoint gets at least two chances within the deadline.
        let attempts = (self.endpoints.len() * 2).max(3);
        let mut reasons = Vec::new();
        for attempt in 1..=attempts {
            let at = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let endpoint = &self.endpoints[at];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let reason = match tokio::time::timeout(remaining, call(endpoint.client.clone())).await
            {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => match classify(&e) {
                    Failure::Unavailable => describe(&e),
                    Failure::Refused => {
                        return Err(StoreError::Refused {
                            operation,
                            message: describe(&e),
                        });
                    }
                },
                Err(_) => format!("no answer within {:?}", self.options.op_timeout),
            };
            tracing::debug!(endpoint = %endpoint.url, operation, attempt, %reason, "etcd unavailable");
            // With several endpoints, say which one answered so.
            reasons.push(if self.endpoints.len() > 1 {
                format!("{}: {reason}", endpoint.url)
            } else {
                reason
            });
            // Another task may have moved on already; move only from where we were.
            let _ = self.current.compare_exchange(
                at,
                (at + 1) % self.endpoints.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if attempt < attempts {
                let wait = backoff
                    .next_wait()
                    .min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(wait).await;
            }
        }
        // The last reason of each endpoint is enough to say what is wrong.
        reasons.dedup();
        let reason = reasons
            .last()
            .cloned()
            .unwrap_or_else(|| format!("no answer within {:?}", self.options.op_timeout));
        Err(StoreError::Unavailable {
            endpoints: self.described.clone(),
            reason,
        })
    }

    /// Every key under `prefix`, at one revision.
    pub async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let prefix = prefix.to_string();
        let mut response = self
            .call("a listing", |c| {
                let prefix = prefix.clone();
                async move {
                    c.kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .get(prefix, Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok(Listing {
            revision: response.header().map(|h| h.revision()).unwrap_or_default(),
            entries: response.take_kvs().iter().filter_map(entry).collect(),
        })
    }

    /// Several reads answered at one revision (one read-only transaction).
    pub async fn read(&self, reads: &[Read]) -> Result<ReadResult, StoreError> {
        let ops: Vec<TxnOp> = reads
            .iter()
            .map(|r| match r {
                Read::Key(key) => TxnOp::get(key.as_str(), None),
                Read::Prefix { prefix, keys_only } => {
                    let mut options = GetOptions::new().with_prefix();
                    if *keys_only {
                        options = options.with_keys_only();
                    }
                    TxnOp::get(prefix.as_str(), Some(options))
                }
            })
            .collect();
        let response = self
            .call("a read", |c| {
                let txn = Txn::new().and_then(ops.clone());
                async move {
                    c.kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .txn(txn)
                        .await
                }
            })
            .await?;
        let answers = response
            .op_responses()
            .into_iter()
            .map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().iter().filter_map(entry).collect(),
                _ => Vec::new(),
            })
            .collect::<Vec<_>>();
        if answers.len() != reads.len() {
            return Err(StoreError::Refused {
                operation: "a read",
                message: format!("{} answers to {} reads", answers.len(), reads.len()),
            });
        }
        Ok(ReadResult {
            revision: response.header().map(|h| h.revision()).unwrap_or_default(),
            answers,
        })
    }

    /// Applies `plan` atomically when every guard holds.
    pub async fn commit(&self, plan: &WritePlan) -> Result<Commit, StoreError> {
        let compares: Vec<Compare> = plan
            .guards
            .iter()
            .map(|g| Compare::mod_revision(g.key.as_str(), CompareOp::Equal, g.mod_revision))
            .collect();
        let mut ops: Vec<TxnOp> = plan
            .puts
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
            .collect();
        ops.extend(plan.deletes.iter().map(|k| TxnOp::delete(k.as_str(), None)));
        // A retry after a lost answer finds the guards broken by its own first attempt and
        // reports GuardFailed; the caller re-reads and decides, so that is safe.
        let response = self
            .call("a transaction", |mut c| {
                let txn = Txn::new().when(compares.clone()).and_then(ops.clone());
                async move { c.txn(txn).await }
            })
            .await?;
        if response.succeeded() {
            Ok(Commit::Committed {
                revision: response.header().map(|h| h.revision()).unwrap_or_default(),
            })
        } else {
            Ok(Commit::GuardFailed)
        }
    }

    /// Watches every key under `prefix` from `from_revision` on. Returns once etcd confirmed
    /// the watch, so success means etcd is reachable.
    pub async fn watch(&self, prefix: &str, from_revision: i64) -> Result<Watcher, StoreError> {
        let prefix = prefix.to_string();
        let mut stream = self
            .call("a watch", |c| {
                let prefix = prefix.clone();
                async move {
                    c.watch_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .watch(
                            prefix,
                            Some(
                                WatchOptions::new()
                                    .with_prefix()
                                    .with_start_revision(from_revision),
                            ),
                        )
                        .await
                }
            })
            .await?;
        let unavailable = |reason: String| StoreError::Unavailable {
            endpoints: self.described.clone(),
            reason,
        };
        // The first message acknowledges the creation; against etcd 3.4 a start revision that
        // was compacted is answered by a cancellation (with an empty reason) instead or next.
        let first = tokio::time::timeout(self.options.op_timeout, stream.message())
            .await
            .map_err(|_| unavailable("the watch was not confirmed in time".into()))?
            .map_err(|e| unavailable(format!("watch: {e}")))?
            .ok_or_else(|| unavailable("the watch closed before it was confirmed".into()))?;
        let pending = if first.canceled() && first.compact_revision() > 0 {
            Some(WatchMessage::Compacted {
                compact_revision: first.compact_revision(),
            })
        } else if first.canceled() {
            return Err(StoreError::Refused {
                operation: "a watch",
                message: format!("cancelled: {:?}", first.cancel_reason()),
            });
        } else {
            None
        };
        Ok(Watcher {
            stream,
            pending,
            endpoints: self.described.clone(),
        })
    }

    /// Grants a lease of `ttl`.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        self.call("a lease grant", |mut c| async move {
            c.lease_grant(seconds, None).await
        })
        .await
        .map(|r| r.id())
    }

    /// Opens a keep-alive channel for `lease`; the caller refreshes it (about every TTL/3).
    pub async fn keep_alive(&self, lease: i64) -> Result<LeaseKeeper, StoreError> {
        let result = self
            .call("a lease keep-alive", |mut c| async move {
                c.lease_keep_alive(lease).await
            })
            .await;
        match result {
            Ok((keeper, stream)) => Ok(LeaseKeeper {
                lease,
                keeper,
                stream,
                endpoints: self.described.clone(),
                timeout: self.options.op_timeout,
            }),
            // etcd-client reports a lease etcd no longer knows as a refusal.
            Err(StoreError::Refused { message, .. }) => Err(StoreError::Refused {
                operation: "a lease keep-alive",
                message,
            }),
            Err(e) => Err(e),
        }
    }

    /// Revokes `lease`, deleting every key bound to it.
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.call("a lease revoke", |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await
        .map(|_| ())
    }

    /// Writes several keys bound to `lease`, in one transaction.
    pub async fn put_leased(
        &self,
        entries: &[(String, Vec<u8>)],
        lease: i64,
    ) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = entries
            .iter()
            .map(|(k, v)| {
                TxnOp::put(
                    k.as_str(),
                    v.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        self.call("a leased write", |mut c| {
            let txn = Txn::new().and_then(ops.clone());
            async move { c.txn(txn).await }
        })
        .await
        .map(|_| ())
    }

    /// Deletes `key` only while it is bound to `lease`: a pod that moved to another replica
    /// keeps the record that replica wrote.
    pub async fn delete_if_leased(&self, key: &str, lease: i64) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.call("a leased delete", |mut c| {
            let txn = Txn::new()
                .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            async move { c.txn(txn).await }
        })
        .await
        .map(|r| r.succeeded())
    }
}

impl EtcdStore {
    /// Creates `key` = `value` bound to `lease` if the key does not exist (an election
    /// campaign); `Ok(false)` when another holder has it.
    pub async fn create_leased(
        &self,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<bool, StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.call("an election campaign", |mut c| {
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            async move { c.txn(txn).await }
        })
        .await
        .map(|r| r.succeeded())
    }

    /// Applies puts (each optionally bound to a lease) and deletes only while `fence` holds
    /// `fence_value` (the writer still leads); `Ok(false)` when it does not.
    pub async fn fenced_write(
        &self,
        fence: &str,
        fence_value: &str,
        puts: &[(String, Vec<u8>, Option<i64>)],
        deletes: &[String],
    ) -> Result<bool, StoreError> {
        let compare = Compare::value(fence, CompareOp::Equal, fence_value);
        let mut ops: Vec<TxnOp> = puts
            .iter()
            .map(|(k, v, lease)| {
                let options = lease.map(|l| PutOptions::new().with_lease(l));
                TxnOp::put(k.as_str(), v.clone(), options)
            })
            .collect();
        ops.extend(deletes.iter().map(|k| TxnOp::delete(k.as_str(), None)));
        self.call("a leader's write", |mut c| {
            let txn = Txn::new().when([compare.clone()]).and_then(ops.clone());
            async move { c.txn(txn).await }
        })
        .await
        .map(|r| r.succeeded())
    }

    /// Puts `key` bound to `lease`, or without one.
    pub async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call("a write", |mut c| {
            let options = lease.map(|l| PutOptions::new().with_lease(l));
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, options).await }
        })
        .await
        .map(|_| ())
    }

    /// Deletes `key`; `Ok(false)` when it did not exist.
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.call("a delete", |mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await
        .map(|r| r.deleted() > 0)
    }

    /// The last `limit` keys under `prefix` in key order (newest last for time-ordered keys),
    /// returned newest first.
    pub async fn last_under(&self, prefix: &str, limit: i64) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        let response = self
            .call("a range read", |c| {
                let prefix = prefix.clone();
                async move {
                    c.kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .get(
                            prefix,
                            Some(
                                GetOptions::new()
                                    .with_prefix()
                                    .with_sort(SortTarget::Key, SortOrder::Descend)
                                    .with_limit(limit),
                            ),
                        )
                        .await
                }
            })
            .await?;
        Ok(response.kvs().iter().filter_map(entry).collect())
    }
}

/// A confirmed watch.
pub struct Watcher {
    stream: etcd_client::WatchStream,
    pending: Option<WatchMessage>,
    endpoints: String,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// The next batch of changes. An error means the watch is broken (etcd went away); watch
    /// again from the last revision seen.
    pub async fn next(&mut self) -> Result<WatchMessage, StoreError> {
        if let Some(pending) = self.pending.take() {
            return Ok(pending);
        }
        loop {
            let unavailable = |reason: String| StoreError::Unavailable {
                endpoints: self.endpoints.clone(),
                reason,
            };
            let response = self
                .stream
                .message()
                .await
                .map_err(|e| unavailable(format!("watch: {}", describe(&e))))?
                .ok_or_else(|| unavailable("etcd closed the watch".into()))?;
            if response.canceled() {
                // etcd 3.4 leaves the reason empty on compaction: the revision tells.
                if response.compact_revision() > 0 {
                    return Ok(WatchMessage::Compacted {
                        compact_revision: response.compact_revision(),
                    });
                }
                return Err(unavailable(format!(
                    "etcd cancelled the watch: {:?}",
                    response.cancel_reason()
                )));
            }
            if response.created() {
                continue;
            }
            let revision = response.header().map(|h| h.revision()).unwrap_or_default();
            let events = response
                .events()
                .iter()
                .filter_map(|event| {
                    let kv = event.kv()?;
                    // `Event::event_type` panics on a type it does not know; a put always
                    // leaves the key at version >= 1 and a deletion reports version 0.
                    if kv.version() == 0 {
                        Some(WatchEvent::Delete {
                            key: kv.key_str().ok()?.to_string(),
                            revision: kv.mod_revision(),
                        })
                    } else {
                        entry(kv).map(WatchEvent::Put)
                    }
                })
                .collect();
            return Ok(WatchMessage::Events { revision, events });
        }
    }
}

/// A lease's keep-alive channel.
pub struct LeaseKeeper {
    lease: i64,
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
    endpoints: String,
    timeout: Duration,
}

impl std::fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseKeeper")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl LeaseKeeper {
    /// Renews the lease: `Ok(true)` while it lives, `Ok(false)` once etcd let it expire.
    pub async fn refresh(&mut self) -> Result<bool, StoreError> {
        let unavailable = |reason: String| StoreError::Unavailable {
            endpoints: self.endpoints.clone(),
            reason,
        };
        self.keeper
            .keep_alive()
            .await
            .map_err(|e| unavailable(format!("lease keep-alive: {}", describe(&e))))?;
        let answer = tokio::time::timeout(self.timeout, self.stream.message())
            .await
            .map_err(|_| unavailable("lease keep-alive: no answer in time".into()))?
            .map_err(|e| unavailable(format!("lease keep-alive: {}", describe(&e))))?
            .ok_or_else(|| unavailable("lease keep-alive: etcd closed the stream".into()))?;
        Ok(answer.ttl() > 0)
    }
}

enum Failure {
    /// Worth trying again, elsewhere or later.
    Unavailable,
    /// etcd understood and said no.
    Refused,
}

fn classify(e: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(status) => match status.code() {
            // Unknown covers a connection that broke mid-call.
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
                Failure::Unavailable
            }
            _ => Failure::Refused,
        },
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::EndpointError(_) => {
            Failure::Unavailable
        }
        _ => Failure::Refused,
    }
}

/// An error in a few words: etcd's message (or the transport's) and the root cause, without
/// the debug dump etcd-client's `Display` gives for gRPC statuses.
fn describe(e: &etcd_client::Error) -> String {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return e.to_string();
    };
    let mut root: Option<&dyn std::error::Error> = std::error::Error::source(status);
    let mut cause = None;
    while let Some(err) = root {
        cause = Some(err);
        root = err.source();
    }
    match cause.map(|c| c.to_string()) {
        Some(cause) if !status.message().contains(&cause) => {
            format!("{} ({cause})", status.message())
        }
        _ if status.message().is_empty() => format!("{}", status.code()),
        _ => status.message().to_string(),
    }
}

fn entry(kv: &etcd_client::KeyValue) -> Option<Entry> {
    // Keys that are not UTF-8 are not Bulwark's.
    let key = kv.key_str().ok()?.to_string();
    Some(Entry {
        key,
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    })
}
