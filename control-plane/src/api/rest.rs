//! The REST/JSON operator API (axum): routes onto [`ops`](super::ops), JSON in and out, the
//! `x-bulwark-stale` header on reads served while etcd is away, and the one mapping of
//! [`OpError`] to HTTP statuses. Every route but `/health/*` and `/openapi.json` is
//! authenticated first ([`authenticate`]: 401 without good credentials); the operations then
//! authorise. `GET /openapi.json` describes it all.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::access::CanIQuery;
use super::degradation::{self, DegradeRequest};
use super::ops::{self, OpError, Ops, Served};
use super::{ui, watch};
use crate::auth::rbac::{Resource, RoleBinding, Scope, Verb};
use crate::auth::{Actor, AuthError};
use crate::serve::Peer;
use crate::store::keys::{OverrideTarget, ServiceKey};

/// The header that marks a read served from an index that may be behind etcd.
pub const STALE_HEADER: &str = "x-bulwark-stale";

/// The `error` of answers given before a request reaches an operation (the operations' own are
/// [`OpError::kind`]).
const TOO_LARGE: &str = "too-large";
const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported-media-type";
const METHOD_NOT_ALLOWED: &str = "method-not-allowed";

/// Every route (method, path) — the OpenAPI document lists exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/apply"),
    ("get", "/v1/status"),
    ("get", "/v1/levels"),
    ("get", "/v1/levels/{namespace}/{service}"),
    ("get", "/v1/events"),
    ("get", "/v1/pods"),
    ("put", "/v1/degrade/mesh"),
    ("delete", "/v1/degrade/mesh"),
    ("put", "/v1/degrade/{namespace}/{service}"),
    ("delete", "/v1/degrade/{namespace}/{service}"),
    ("get", "/metrics"),
    ("get", "/v1/{kind}"),
    ("get", "/v1/{kind}/{namespace}/{name}"),
    ("delete", "/v1/{kind}/{namespace}/{name}"),
    ("get", "/v1/{kind}/{namespace}/{name}/history"),
    ("post", "/v1/{kind}/{namespace}/{name}/rollback"),
    ("get", "/v1/rolebindings"),
    ("get", "/v1/rolebindings/{name}"),
    ("put", "/v1/rolebindings/{name}"),
    ("delete", "/v1/rolebindings/{name}"),
    ("get", "/v1/audit"),
    ("get", "/v1/auth/whoami"),
    ("get", "/v1/version"),
    ("get", "/v1/diagnostics"),
    ("get", "/v1/auth/can-i"),
    ("get", "/openapi.json"),
    ("get", "/health/live"),
    ("get", "/health/ready"),
    ("get", "/v1/watch/status"),
    ("get", "/v1/watch/events"),
    ("get", "/v1/watch/{kind}"),
    ("get", "/v1/graph/{namespace}/{service}"),
];

/// The largest request body accepted unless configured otherwise.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// The REST API over `ops`, with request bodies of at most `max_body` bytes.
pub fn router(ops: Arc<Ops>) -> Router {
    router_with(ops, DEFAULT_MAX_BODY)
}

/// [`router`] with another body limit.
pub fn router_with(ops: Arc<Ops>, max_body: usize) -> Router {
    let open = ui::router()
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/openapi.json", get(openapi))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready));
    Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/status", get(status))
        .route("/v1/levels", get(levels))
        .route("/v1/levels/{namespace}/{service}", get(level))
        .route("/v1/graph/{namespace}/{service}", get(graph))
        .route("/v1/events", get(events))
        .route("/v1/pods", get(pods))
        .route("/v1/degrade/mesh", put(degrade_mesh).delete(clear_mesh))
        .route(
            "/v1/degrade/{namespace}/{service}",
            put(degrade_service).delete(clear_service),
        )
        .route("/metrics", get(metrics))
        .route("/v1/{kind}", get(list))
        .route("/v1/{kind}/{namespace}/{name}", get(read).delete(delete))
        .route("/v1/{kind}/{namespace}/{name}/history", get(history))
        .route("/v1/{kind}/{namespace}/{name}/rollback", post(rollback))
        .route("/v1/rolebindings", get(role_bindings))
        .route(
            "/v1/rolebindings/{name}",
            get(role_binding)
                .put(put_role_binding)
                .delete(delete_role_binding),
        )
        .route("/v1/audit", get(audit))
        .route("/v1/auth/whoami", get(whoami))
        .route("/v1/version", get(version))
        .route("/v1/diagnostics", get(diagnostics))
        .route("/v1/auth/can-i", get(can_i))
        .route("/v1/watch/status", get(watch_status))
        .route("/v1/watch/events", get(watch_events))
        .route("/v1/watch/{kind}", get(watch_list))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            ops.clone(),
            authenticate,
        ))
        .merge(open)
        .layer(axum::middleware::from_fn(json_bodies_only))
        .layer(axum::middleware::from_fn(move |req, next| {
            bodies_within(max_body, req, next)
        }))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(ops.clone(), observe))
        .with_state(ops)
}

/// Counts every request in `bulwark_api_requests_total` and times it, by the route template it
/// matched (never the raw path: the series stay bounded whatever clients send) and method.
async fn observe(
    State(ops): State<Arc<Ops>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let rsp = next.run(req).await;
    ops.metrics
        .api_request(&route, method, rsp.status().as_u16(), started.elapsed());
    rsp
}

/// A body larger than `max` is a JSON 413 naming both sizes — before anything reads it when
/// its length is declared, and when a chunked body runs past the limit while it is read.
async fn bodies_within(
    max: usize,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let too_large = |size: Option<u64>| {
        let said = size.map_or_else(|| "more than that".to_string(), |n| format!("{n} bytes"));
        error_body(
            StatusCode::PAYLOAD_TOO_LARGE,
            TOO_LARGE,
            &format!(
                "the request body is {said}; this control plane accepts at most {max} bytes (--max-request-body)"
            ),
            &[],
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(declared);
    }
    let response = next.run(req).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|t| !t.as_bytes().starts_with(b"application/json"))
    {
        return too_large(None);
    }
    response
}

/// Who sent the request (its bearer token or client certificate), as an [`Actor`] extension
/// for the handlers; 401 when there is no good credential, 503 when the authority that
/// checks it cannot be reached.
async fn authenticate(
    State(ops): State<Arc<Ops>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let mut authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    // A browser's session (the dashboard): its cookie stands for the bearer token, and a write
    // made with it must repeat the session's CSRF token.
    if authorization.is_none()
        && let Some(token) = ui::cookie(req.headers(), ui::SESSION_COOKIE)
    {
        if !ui::csrf_ok(req.method(), req.headers()) {
            ops.metrics.authentication_failed("csrf");
            return ApiError(OpError::Forbidden(format!(
                "a write made with the dashboard's session cookie must repeat its CSRF token in \
                 the {} header",
                ui::CSRF_HEADER
            )))
            .into_response();
        }
        authorization = Some(format!("Bearer {token}").into_bytes());
    }
    match ops
        .authenticator()
        .authenticate(peer.as_ref(), authorization.as_deref())
        .await
    {
        Ok(user) => {
            req.extensions_mut().insert(Actor {
                user: Arc::new(user),
                from: peer.map_or_else(|| Peer::local().addr, |p| p.addr),
            });
            next.run(req).await
        }
        Err(e) => {
            let from = peer.map(|p| p.addr.to_string()).unwrap_or_default();
            ops.metrics.authentication_failed(match e {
                AuthError::Missing => "missing",
                AuthError::Refused(_) => "refused",
                AuthError::Unavailable(_) => "unavailable",
            });
            tracing::info!(%from, path = %req.uri().path(), error = %e, "request not authenticated");
            let error = match e {
                AuthError::Unavailable(m) => OpError::Unavailable(m),
                e => OpError::Unauthenticated(e.to_string()),
            };
            let mut response = ApiError(error).into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"bulwark\""),
                );
            }
            response
        }
    }
}

/// Writes (`POST`, `PUT`) carry JSON and must say so: a body of another type (a form, plain
/// text a browser may send cross-site without asking) is refused with 415 before any route
/// reads it.
async fn json_bodies_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if matches!(*req.method(), Method::POST | Method::PUT) {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let json = content_type.as_deref().is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            let got = content_type.map_or_else(|| "none".to_string(), |t| format!("{t:?}"));
            return error_body(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                UNSUPPORTED_MEDIA_TYPE,
                &format!(
                    "the request body must be JSON: send Content-Type: application/json (got {got})"
                ),
                &[],
            );
        }
    }
    next.run(req).await
}

/// An [`OpError`] on its way out as JSON.
#[derive(Debug)]
pub struct ApiError(OpError);

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self.0, "request failed");
        } else {
            tracing::debug!(error = %self.0, "request refused");
        }
        let mut response = error_body(status, self.0.kind(), &self.0.to_string(), self.0.details());
        if let OpError::RateLimited { retry_after, .. } = &self.0 {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// The error document: `{"error", "message", "details"}`.
#[derive(Debug, serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    details: &'a [String],
}

fn error_body(status: StatusCode, kind: &str, message: &str, details: &[String]) -> Response {
    let body = ErrorBody {
        error: kind,
        message,
        details,
    };
    (status, axum::Json(body)).into_response()
}

type Answer = Result<Response, ApiError>;

fn json<T: serde::Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// `POST /ui/login` `{"token": "..."}`: the dashboard's session. The token is checked as a
/// bearer token, then comes back in the session cookie with a CSRF token beside it; a token
/// the API refuses sets nothing.
async fn login(State(ops): State<Arc<Ops>>, peer: Option<Extension<Peer>>, bytes: Bytes) -> Answer {
    let login: Login = body(&bytes)?;
    let token = login.token.trim();
    let bearer = format!("Bearer {token}");
    let peer = peer.map(|Extension(p)| p);
    let user = match ops
        .authenticator()
        .authenticate(peer.as_ref(), Some(bearer.as_bytes()))
        .await
    {
        Ok(user) => user,
        Err(e) => {
            ops.metrics.authentication_failed("refused");
            return Err(ApiError(OpError::Unauthenticated(e.to_string())));
        }
    };
    let cookies = ui::session_cookies(token).ok_or_else(|| {
        ApiError(OpError::invalid(
            "this token cannot be kept in a cookie; send it in an Authorization header",
        ))
    })?;
    let mut response = json(&serde_json::json!({"user": user.name}));
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `POST /ui/logout`: the session's cookies cleared.
async fn logout() -> Response {
    let mut response = json(&serde_json::json!({"loggedOut": true}));
    for cookie in ui::cleared_cookies() {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// A read's answer, marked when it may be stale.
fn served<T: serde::Serialize>(served: Served<T>) -> Response {
    let mut response = json(&served.value);
    if served.stale {
        response
            .headers_mut()
            .insert(STALE_HEADER, HeaderValue::from_static("true"));
    }
    response
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError(OpError::invalid(format!(
            "the request body is not valid: {e}"
        )))
    })
}

fn path<T>(extracted: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    extracted
        .map(|Path(p)| p)
        .map_err(|e| ApiError(OpError::invalid(format!("bad path: {e}"))))
}

fn query<T>(extracted: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    extracted
        .map(|Query(q)| q)
        .map_err(|e| ApiError(OpError::invalid(format!("bad query: {e}"))))
}

type ResourcePath = Result<Path<(String, String, String)>, PathRejection>;

type Caller = Extension<Actor>;

async fn apply(State(ops): State<Arc<Ops>>, Extension(actor): Caller, bytes: Bytes) -> Answer {
    let request: ops::ApplyRequest = body(&bytes)?;
    Ok(json(&ops.apply(&actor, request).await?))
}

async fn read(State(ops): State<Arc<Ops>>, Extension(actor): Caller, p: ResourcePath) -> Answer {
    let (kind, namespace, name) = path(p)?;
    let key = ops::resource_key(&kind, &namespace, &name)?;
    Ok(served(ops.get(&actor, &key)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    namespace: Option<String>,
    selector: Option<String>,
}

async fn list(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    let kind = ops::parse_kind(&path(p)?)?;
    let q = query(q)?;
    Ok(served(ops.list(
        &actor,
        kind,
        q.namespace.as_deref(),
        q.selector.as_deref(),
    )?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WatchListQuery {
    namespace: Option<String>,
    selector: Option<String>,
    timeout_seconds: Option<u64>,
}

/// A watch's answer: newline-delimited JSON events as they come.
fn streamed(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Response {
    use tokio_stream::StreamExt as _;
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|line| Ok::<_, std::convert::Infallible>(Bytes::from(line)));
    let mut response = Response::new(axum::body::Body::from_stream(lines));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn to_items<T: serde::Serialize>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> String,
) -> watch::Items {
    items
        .into_iter()
        .map(|item| {
            let key = key(&item);
            (key, serde_json::to_value(&item).unwrap_or_default())
        })
        .collect()
}

/// `GET /v1/watch/{kind}`: the listing of `GET /v1/{kind}`, then its changes.
async fn watch_list(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<WatchListQuery>, QueryRejection>,
) -> Answer {
    let kind = ops::parse_kind(&path(p)?)?;
    let q = query(q)?;
    let timeout = watch::timeout(q.timeout_seconds)?;
    let compute = {
        let ops = ops.clone();
        move || {
            let listed = ops
                .list(&actor, kind, q.namespace.as_deref(), q.selector.as_deref())
                .map(|served| {
                    to_items(served.value.items, |r| {
                        let meta = r.metadata();
                        format!("{}/{}", meta.namespace, meta.name)
                    })
                });
            std::future::ready(listed)
        }
    };
    let changes = ops.index.lock().watch_state();
    watched(&ops, timeout, true, changes, compute).await
}

/// The answer of a watch: refused with the first listing's error, else streamed from it,
/// `compute` listing again each time `changes` moves. `deletions`: whether an item gone is
/// told (`DELETED`), or a listing only ever adds (events).
async fn watched<T, F, Fut>(
    ops: &Ops,
    timeout: std::time::Duration,
    deletions: bool,
    changes: tokio::sync::watch::Receiver<T>,
    mut compute: F,
) -> Answer
where
    T: Send + Sync + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<watch::Items, OpError>> + Send,
{
    let first = compute().await?;
    Ok(streamed(watch::stream(
        first,
        deletions,
        changes,
        ops.stop.clone(),
        timeout,
        compute,
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WatchQuery {
    timeout_seconds: Option<u64>,
}

/// `GET /v1/watch/status`: every resource's convergence, then its changes.
async fn watch_status(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    q: Result<Query<WatchQuery>, QueryRejection>,
) -> Answer {
    let timeout = watch::timeout(query(q)?.timeout_seconds)?;
    let compute = {
        let ops = ops.clone();
        move || std::future::ready(status_items(&ops, &actor))
    };
    let changes = ops.index.lock().watch_state();
    watched(&ops, timeout, true, changes, compute).await
}

/// What `GET /v1/watch/status` follows: each service's level (`kind: ServiceLevel`, what
/// `meshctl status` shows of it: no per-dependency counts, no computation time, which move
/// with every report) and each resource's convergence (`kind: ResourceStatus`).
fn status_items(ops: &Ops, actor: &Actor) -> Result<watch::Items, OpError> {
    let tagged = |kind: &str, mut value: serde_json::Value| {
        if let Some(object) = value.as_object_mut() {
            object.insert("kind".into(), kind.into());
        }
        value
    };
    let resources = ops.status(actor)?.value.resources;
    let services = ops.levels(actor, None)?.value.services;
    let mut items: watch::Items = services
        .into_iter()
        .map(|s| {
            let mut value = serde_json::to_value(&s).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.remove("dependencies");
                object.remove("computedAt");
            }
            (
                format!("level {}/{}", s.namespace, s.service),
                tagged("ServiceLevel", value),
            )
        })
        .collect();
    items.extend(resources.into_iter().map(|r| {
        let value = serde_json::to_value(&r).unwrap_or_default();
        (
            format!("resource {}", r.id),
            tagged("ResourceStatus", value),
        )
    }));
    Ok(items)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WatchEventsQuery {
    service: Option<String>,
    limit: Option<usize>,
    timeout_seconds: Option<u64>,
}

/// `GET /v1/watch/events`: the last events (oldest first), then each new one.
async fn watch_events(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    q: Result<Query<WatchEventsQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    let timeout = watch::timeout(q.timeout_seconds)?;
    let compute = {
        let ops = ops.clone();
        move || {
            let (ops, actor, service) = (ops.clone(), actor.clone(), q.service.clone());
            async move {
                let mut events = ops
                    .events(&actor, service.as_deref(), q.limit)
                    .await?
                    .events;
                // Newest first as listed; a stream tells them in the order they happened.
                events.reverse();
                Ok(to_items(events, |e| {
                    serde_json::to_string(e).unwrap_or_default()
                }))
            }
        }
    };
    let changes = ops.index.lock().watch_events();
    watched(&ops, timeout, false, changes, compute).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeleteQuery {
    resource_version: Option<String>,
    by: Option<String>,
    /// Delete an UpstreamPolicy that other policies still name.
    force: Option<bool>,
}

async fn delete(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: ResourcePath,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> Answer {
    let (kind, namespace, name) = path(p)?;
    let key = ops::resource_key(&kind, &namespace, &name)?;
    let q = query(q)?;
    let expected = match q.resource_version.as_deref().map(str::trim) {
        None => None,
        // `?resourceVersion=` asks for a check and names no version: refused like `abc`,
        // never taken as "no check".
        Some("") => {
            return Err(ApiError(OpError::invalid(
                "resourceVersion must be a resource version (an integer), got \"\"",
            )));
        }
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            ApiError(OpError::invalid(format!(
                "resourceVersion must be a resource version (an integer), got {v:?}"
            )))
        })?),
    };
    let force = q.force.unwrap_or(false);
    Ok(json(
        &ops.delete(&actor, &key, expected, q.by, force).await?,
    ))
}

async fn history(State(ops): State<Arc<Ops>>, Extension(actor): Caller, p: ResourcePath) -> Answer {
    let (kind, namespace, name) = path(p)?;
    let key = ops::resource_key(&kind, &namespace, &name)?;
    Ok(served(ops.history(&actor, &key)?))
}

async fn rollback(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: ResourcePath,
    bytes: Bytes,
) -> Answer {
    let (kind, namespace, name) = path(p)?;
    let key = ops::resource_key(&kind, &namespace, &name)?;
    let request: ops::RollbackRequest = body(&bytes)?;
    Ok(json(&ops.rollback(&actor, &key, request).await?))
}

async fn status(State(ops): State<Arc<Ops>>, Extension(actor): Caller) -> Answer {
    Ok(served(ops.status(&actor)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelsQuery {
    namespace: Option<String>,
}

async fn levels(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    q: Result<Query<LevelsQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    Ok(served(ops.levels(&actor, q.namespace.as_deref())?))
}

async fn pods(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    q: Result<Query<LevelsQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    Ok(served(ops.pods(&actor, q.namespace.as_deref())?))
}

type ServicePath = Result<Path<(String, String)>, PathRejection>;

async fn level(State(ops): State<Arc<Ops>>, Extension(actor): Caller, p: ServicePath) -> Answer {
    let (namespace, service) = path(p)?;
    Ok(served(
        ops.level(&actor, &ServiceKey { namespace, service })?,
    ))
}

async fn graph(State(ops): State<Arc<Ops>>, Extension(actor): Caller, p: ServicePath) -> Answer {
    let (namespace, service) = path(p)?;
    Ok(served(
        ops.graph(&actor, &ServiceKey { namespace, service })?,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    service: Option<String>,
    limit: Option<usize>,
}

async fn events(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    Ok(json(
        &ops.events(&actor, q.service.as_deref(), q.limit).await?,
    ))
}

async fn degrade_mesh(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    bytes: Bytes,
) -> Answer {
    let request: DegradeRequest = body(&bytes)?;
    Ok(json(
        &ops.degrade(&actor, OverrideTarget::Mesh, request).await?,
    ))
}

async fn degrade_service(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: ServicePath,
    bytes: Bytes,
) -> Answer {
    let (namespace, service) = path(p)?;
    let target = degradation::parse_target(&namespace, &service)?;
    let request: DegradeRequest = body(&bytes)?;
    Ok(json(&ops.degrade(&actor, target, request).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearQuery {
    by: Option<String>,
}

async fn clear_mesh(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    q: Result<Query<ClearQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    Ok(json(
        &ops.clear_degrade(&actor, OverrideTarget::Mesh, q.by)
            .await?,
    ))
}

async fn clear_service(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: ServicePath,
    q: Result<Query<ClearQuery>, QueryRejection>,
) -> Answer {
    let (namespace, service) = path(p)?;
    let target = degradation::parse_target(&namespace, &service)?;
    let q = query(q)?;
    Ok(json(&ops.clear_degrade(&actor, target, q.by).await?))
}

async fn role_bindings(State(ops): State<Arc<Ops>>, Extension(actor): Caller) -> Answer {
    Ok(served(ops.role_bindings(&actor)?))
}

async fn role_binding(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: Result<Path<String>, PathRejection>,
) -> Answer {
    let name = path(p)?;
    let list = ops.role_bindings(&actor)?;
    match list.value.items.into_iter().find(|b| b.name == name) {
        Some(b) => Ok(json(&b)),
        None => Err(ApiError(OpError::NotFound(format!(
            "role binding {name} not found"
        )))),
    }
}

async fn put_role_binding(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: Result<Path<String>, PathRejection>,
    bytes: Bytes,
) -> Answer {
    let name = path(p)?;
    let binding: RoleBinding = body(&bytes)?;
    Ok(json(&ops.put_role_binding(&actor, &name, binding).await?))
}

async fn delete_role_binding(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    p: Result<Path<String>, PathRejection>,
) -> Answer {
    let name = path(p)?;
    ops.delete_role_binding(&actor, &name).await?;
    Ok(json(&serde_json::json!({"deleted": name})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    namespace: Option<String>,
    limit: Option<usize>,
}

async fn audit(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    Ok(json(
        &ops.audit_log(&actor, q.namespace.as_deref(), q.limit)
            .await?,
    ))
}

async fn whoami(State(ops): State<Arc<Ops>>, Extension(actor): Caller) -> Answer {
    Ok(json(&ops.whoami(&actor)))
}

async fn diagnostics(State(ops): State<Arc<Ops>>, Extension(actor): Caller) -> Answer {
    Ok(json(&ops.diagnostics(&actor).await?))
}

/// The control plane's version and the commit it was built from; any authenticated caller.
async fn version(Extension(_actor): Caller) -> Answer {
    Ok(json(&serde_json::json!({
        "version": bulwark_telemetry::VERSION,
        "revision": bulwark_telemetry::REVISION,
    })))
}

async fn can_i(
    State(ops): State<Arc<Ops>>,
    Extension(actor): Caller,
    q: Result<Query<CanIQuery>, QueryRejection>,
) -> Answer {
    let q = query(q)?;
    Ok(json(&ops.can_i(&actor, &q)?))
}

async fn metrics(State(ops): State<Arc<Ops>>, Extension(actor): Caller) -> Response {
    if let Err(e) = ops.authorize(&actor, Verb::Get, Resource::Metrics, Scope::Cluster) {
        return ApiError(e).into_response();
    }
    scrape(&ops)
}

fn scrape(ops: &Ops) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        ops.metrics.render(&ops.index),
    )
        .into_response()
}

/// The metrics listener (`--metrics`): `GET /metrics` and the health probes, and nothing of the
/// operator API — for a Prometheus that may reach this port (the manifests let a monitoring
/// namespace in) without credentials and without any access to the API.
pub fn metrics_router(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/metrics", get(|State(ops): State<Arc<Ops>>| async move { scrape(&ops) }))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError(OpError::NotFound(format!(
                "no route for {method} {}: the metrics listener serves GET /metrics and /health/* only (the API is on --http)",
                uri.path()
            )))
            .into_response()
        })
        .with_state(ops)
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        super::openapi::document(),
    )
        .into_response()
}

async fn live() -> Response {
    json(&serde_json::json!({"live": true}))
}

/// Ready once the index was loaded: this replica can serve reads and snapshots (stale ones
/// while etcd is away, which every replica then shares).
async fn ready(State(ops): State<Arc<Ops>>) -> Response {
    match ops.readiness() {
        Ok(s) => served(Served {
            value: serde_json::json!({"ready": true, "revision": s.value, "stale": s.stale}),
            stale: s.stale,
        }),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn no_route(method: Method, uri: Uri) -> Response {
    ApiError(OpError::NotFound(format!(
        "no route for {method} {}",
        uri.path()
    )))
    .into_response()
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    error_body(
        StatusCode::METHOD_NOT_ALLOWED,
        METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed on {}", uri.path()),
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(super::super::openapi::document()).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("path item")
                    .keys()
                    .filter(|k| *k != "parameters")
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_error_kind_is_in_the_openapi_document() {
        let doc: serde_json::Value =
            serde_json::from_str(super::super::openapi::document()).expect("the document is JSON");
        let documented: BTreeSet<&str> =
            doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
                .as_array()
                .expect("an enum")
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
        let errors = [
            OpError::invalid("x"),
            OpError::Conflict("x".into()),
            OpError::NotFound("x".into()),
            OpError::Unavailable("x".into()),
            OpError::Internal("x".into()),
            OpError::Unauthenticated("x".into()),
            OpError::Forbidden("x".into()),
            OpError::RateLimited {
                message: "x".into(),
                retry_after: std::time::Duration::from_secs(1),
            },
        ];
        let mut kinds: BTreeSet<&str> = errors.iter().map(OpError::kind).collect();
        kinds.extend([TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, METHOD_NOT_ALLOWED]);
        assert_eq!(documented, kinds);
    }

    #[test]
    fn every_reference_in_the_openapi_document_resolves() {
        let doc: serde_json::Value =
            serde_json::from_str(super::super::openapi::document()).expect("the document is JSON");
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn errors_map_to_their_statuses_once() {
        let cases = [
            (OpError::invalid("x"), StatusCode::BAD_REQUEST),
            (OpError::Conflict("x".into()), StatusCode::CONFLICT),
            (OpError::NotFound("x".into()), StatusCode::NOT_FOUND),
            (
                OpError::Unavailable("x".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                OpError::Internal("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError(e).into_response().status(), status);
        }
    }
}
