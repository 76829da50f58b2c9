//! The gRPC operator API (`bulwark.v1.Operator`): the REST operations over protobuf, through
//! the same [`ops`](super::ops), with the one mapping of [`OpError`] to gRPC statuses. Every
//! call is authenticated as REST requests are (bearer token in the `authorization` metadata,
//! or the client certificate) before the operation authorises it.

use std::sync::Arc;

use bulwark_proto::v1 as pb;
use bulwark_proto::v1::operator_server::Operator;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::degradation::{self, DegradeRequest};
use super::ops::{self, OpError, Ops, Served};
use crate::auth::{Actor, AuthError};
use crate::serve::Peer;
use crate::store::keys::OverrideTarget;

/// The metadata key that marks a read served from an index that may be behind etcd.
pub const STALE_METADATA: &str = "x-bulwark-stale";
/// The metadata key carrying REST's error kind.
pub const ERROR_METADATA: &str = "x-bulwark-error";

/// The gRPC face of [`Ops`].
#[derive(Debug, Clone)]
pub struct OperatorService {
    ops: Arc<Ops>,
}

impl OperatorService {
    pub fn new(ops: Arc<Ops>) -> Self {
        OperatorService { ops }
    }
}

/// The one mapping of operation errors to gRPC statuses.
pub fn rescue(e: OpError) -> Status {
    let code = match &e {
        OpError::Invalid { .. } => tonic::Code::InvalidArgument,
        OpError::Conflict(_) => tonic::Code::Aborted,
        OpError::NotFound(_) => tonic::Code::NotFound,
        OpError::Unavailable(_) => tonic::Code::Unavailable,
        OpError::Internal(_) => tonic::Code::Internal,
        OpError::Unauthenticated(_) => tonic::Code::Unauthenticated,
        OpError::Forbidden(_) => tonic::Code::PermissionDenied,
        OpError::RateLimited { .. } => tonic::Code::ResourceExhausted,
    };
    let message = match e.details() {
        [] => e.to_string(),
        details => format!("{e}: {}", details.join("; ")),
    };
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(ERROR_METADATA, MetadataValue::from_static(e.kind()));
    status
}

impl OperatorService {
    /// Who made the call: its `authorization` metadata, else its client certificate.
    async fn actor<T>(&self, request: &Request<T>) -> Result<Actor, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        match self
            .ops
            .authenticator()
            .authenticate(peer.as_ref(), authorization.as_deref())
            .await
        {
            Ok(user) => Ok(Actor {
                user: std::sync::Arc::new(user),
                from: peer.map_or_else(|| Peer::local().addr, |p| p.addr),
            }),
            Err(e) => {
                self.ops.metrics.authentication_failed(match e {
                    AuthError::Missing => "missing",
                    AuthError::Refused(_) => "refused",
                    AuthError::Unavailable(_) => "unavailable",
                });
                Err(rescue(match e {
                    AuthError::Unavailable(m) => OpError::Unavailable(m),
                    e => OpError::Unauthenticated(e.to_string()),
                }))
            }
        }
    }
}

fn served<T>(served: Served<T>) -> Response<T> {
    let mut response = Response::new(served.value);
    if served.stale {
        response
            .metadata_mut()
            .insert(STALE_METADATA, MetadataValue::from_static("true"));
    }
    response
}

fn apply_response(r: ops::ApplyResponse) -> pb::ApplyResponse {
    pb::ApplyResponse {
        results: r
            .results
            .into_iter()
            .map(|r| pb::ApplyResult {
                id: r.id,
                action: r.action.as_str().to_string(),
                resource_version: r.resource_version,
                diff: r.diff,
            })
            .collect(),
        revision: r.revision,
    }
}

/// The mesh, or one service.
fn override_target(mesh: bool, namespace: &str, service: &str) -> Result<OverrideTarget, Status> {
    if mesh {
        return Ok(OverrideTarget::Mesh);
    }
    degradation::parse_target(namespace, service).map_err(rescue)
}

fn by(by: String) -> Option<String> {
    Some(by).filter(|b| !b.is_empty())
}

fn expected(resource_version: i64) -> Option<i64> {
    (resource_version != 0).then_some(resource_version)
}

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn levels(
        &self,
        request: Request<pb::LevelsRequest>,
    ) -> Result<Response<pb::LevelsResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let namespace = (!r.namespace.is_empty()).then_some(r.namespace.as_str());
        let levels = self.ops.levels(&actor, namespace).map_err(rescue)?;
        Ok(served(Served {
            value: pb::LevelsResponse {
                computed_unix_ms: levels.value.computed_at,
                services: levels
                    .value
                    .services
                    .iter()
                    .map(|s| pb::ServiceStatus {
                        level: Some(s.to_pb()),
                        unhealthy: s.unhealthy.clone(),
                        reporting_pods: i64::try_from(s.reporting_pods).unwrap_or(i64::MAX),
                        summary: s.summary.clone(),
                        computed: s.computed.to_pb().into(),
                    })
                    .collect(),
            },
            stale: levels.stale,
        }))
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let service = (!r.service.is_empty()).then_some(r.service.as_str());
        let limit = (r.limit != 0).then_some(r.limit as usize);
        let events = self
            .ops
            .events(&actor, service, limit)
            .await
            .map_err(rescue)?;
        Ok(Response::new(pb::EventsResponse {
            events: events
                .events
                .into_iter()
                .map(|e| pb::Event {
                    time_unix_ms: e.time,
                    service: e.service,
                    kind: e.kind,
                    from: e.from,
                    to: e.to,
                    reasons: e.reasons,
                    by: e.by,
                    text: e.text,
                })
                .collect(),
        }))
    }

    async fn degrade(
        &self,
        request: Request<pb::DegradeRequest>,
    ) -> Result<Response<pb::DegradeResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let target = override_target(r.mesh, &r.namespace, &r.service)?;
        let level = crate::degradation::compute::Level::from_pb(r.level());
        let answer = self
            .ops
            .degrade(
                &actor,
                target,
                DegradeRequest {
                    level: level.to_string(),
                    ttl: r.ttl,
                    reason: r.reason,
                    by: by(r.by),
                },
            )
            .await
            .map_err(rescue)?;
        let o = answer.r#override;
        Ok(Response::new(pb::DegradeResponse {
            r#override: Some(pb::Override {
                level: level.to_pb().into(),
                reason: o.reason,
                by: o.by,
                expires_unix_ms: o.expires,
                mesh: o.mesh,
            }),
        }))
    }

    async fn clear_degrade(
        &self,
        request: Request<pb::ClearDegradeRequest>,
    ) -> Result<Response<pb::DegradeResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let target = override_target(r.mesh, &r.namespace, &r.service)?;
        let who = by(r.by);
        self.ops
            .clear_degrade(&actor, target, who.clone())
            .await
            .map_err(rescue)?;
        Ok(Response::new(pb::DegradeResponse { r#override: None }))
    }

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let actor = self.actor(&request).await?;
        let request = request.into_inner();
        let mut resources = Vec::with_capacity(request.resources.len());
        let mut details = Vec::new();
        for (i, text) in request.resources.iter().enumerate() {
            match serde_json::from_str(text) {
                Ok(value) => resources.push(value),
                Err(e) => details.push(format!("resources[{i}]: invalid JSON: {e}")),
            }
        }
        if !details.is_empty() {
            return Err(rescue(OpError::Invalid {
                message: "resources must be JSON documents; nothing was stored".into(),
                details,
            }));
        }
        let response = self
            .ops
            .apply(
                &actor,
                ops::ApplyRequest {
                    resources,
                    dry_run: request.dry_run,
                    by: by(request.by),
                },
            )
            .await
            .map_err(rescue)?;
        Ok(Response::new(apply_response(response)))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let key = ops::resource_key(&r.kind, &r.namespace, &r.name).map_err(rescue)?;
        let found = self.ops.get(&actor, &key).map_err(rescue)?;
        let resource_version = found
            .value
            .metadata()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default();
        Ok(served(Served {
            value: pb::GetResponse {
                resource: ops::resource_json(&found.value),
                resource_version,
            },
            stale: found.stale,
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let kind = ops::parse_kind(&r.kind).map_err(rescue)?;
        let listed = self
            .ops
            .list(
                &actor,
                kind,
                Some(r.namespace.as_str()).filter(|ns| !ns.is_empty()),
                Some(r.selector.as_str()),
            )
            .map_err(rescue)?;
        Ok(served(Served {
            value: pb::ListResponse {
                items: listed.value.items.iter().map(ops::resource_json).collect(),
                revision: listed.value.revision,
            },
            stale: listed.stale,
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let key = ops::resource_key(&r.kind, &r.namespace, &r.name).map_err(rescue)?;
        let deleted = self
            .ops
            .delete(
                &actor,
                &key,
                expected(r.resource_version),
                by(r.by),
                r.force,
            )
            .await
            .map_err(rescue)?;
        Ok(Response::new(pb::DeleteResponse {
            id: deleted.id,
            revision: deleted.revision,
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let key = ops::resource_key(&r.kind, &r.namespace, &r.name).map_err(rescue)?;
        let history = self.ops.history(&actor, &key).map_err(rescue)?;
        Ok(served(Served {
            value: pb::HistoryResponse {
                items: history
                    .value
                    .items
                    .into_iter()
                    .map(|item| pb::HistoryEntry {
                        revision: item.revision,
                        op: item.op.as_str().to_string(),
                        by: item.by,
                        at: item.at,
                        resource: item.resource.map(|r| r.to_string()).unwrap_or_default(),
                    })
                    .collect(),
            },
            stale: history.stale,
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let actor = self.actor(&request).await?;
        let r = request.into_inner();
        let key = ops::resource_key(&r.kind, &r.namespace, &r.name).map_err(rescue)?;
        let response = self
            .ops
            .rollback(
                &actor,
                &key,
                ops::RollbackRequest {
                    to_revision: r.to_revision,
                    by: by(r.by),
                    resource_version: expected(r.resource_version),
                },
            )
            .await
            .map_err(rescue)?;
        Ok(Response::new(apply_response(response)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let actor = self.actor(&_request).await?;
        let status = self.ops.status(&actor).map_err(rescue)?;
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        Ok(served(Served {
            value: pb::StatusResponse {
                revision: status.value.revision,
                resources: status
                    .value
                    .resources
                    .into_iter()
                    .map(|r| pb::ResourceStatus {
                        id: r.id,
                        resource_version: r.resource_version,
                        pods: Some(pb::PodCounts {
                            applied: to_i64(r.pods.applied),
                            total: to_i64(r.pods.total),
                            nacks: r
                                .pods
                                .nacks
                                .into_iter()
                                .map(|n| pb::PodNack {
                                    pod: n.pod,
                                    version: n.version,
                                    error: n.error,
                                })
                                .collect(),
                        }),
                    })
                    .collect(),
            },
            stale: status.stale,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_codes_once() {
        let cases = [
            (
                OpError::invalid("x"),
                tonic::Code::InvalidArgument,
                "invalid",
            ),
            (
                OpError::Conflict("x".into()),
                tonic::Code::Aborted,
                "conflict",
            ),
            (
                OpError::NotFound("x".into()),
                tonic::Code::NotFound,
                "not-found",
            ),
            (
                OpError::Unavailable("x".into()),
                tonic::Code::Unavailable,
                "unavailable",
            ),
            (
                OpError::Internal("x".into()),
                tonic::Code::Internal,
                "internal",
            ),
        ];
        for (e, code, kind) in cases {
            let status = rescue(e);
            assert_eq!(status.code(), code);
            assert_eq!(
                status
                    .metadata()
                    .get(ERROR_METADATA)
                    .and_then(|v| v.to_str().ok()),
                Some(kind)
            );
        }
    }

    #[test]
    fn invalid_statuses_carry_every_detail() {
        let status = rescue(OpError::Invalid {
            message: "2 problems found; nothing was stored".into(),
            details: vec!["A/b/c: spec.x: bad".into(), "A/b/d: spec.y: bad".into()],
        });
        assert_eq!(
            status.message(),
            "2 problems found; nothing was stored: A/b/c: spec.x: bad; A/b/d: spec.y: bad"
        );
    }
}
