//! Roles and role bindings: who may do what, where. Four roles, each a fixed set of
//! permissions (verb × resource); a binding gives one role to users, groups and service
//! accounts, in one namespace or cluster-wide. Bindings are stored in etcd (`rbac/bindings/`)
//! and read from the index, so a binding applied takes effect on the next request. Members of
//! the configured administrator groups are administrators everywhere, so that a fresh
//! installation can be administered at all.
//!
//! | role       | may                                                                          |
//! |------------|------------------------------------------------------------------------------|
//! | `viewer`   | get, list: policies, history, levels, events, pods, status                   |
//! | `editor`   | a viewer's, and apply, delete, rollback policies                             |
//! | `operator` | a viewer's, and apply, delete degradation overrides                          |
//! | `admin`    | everything: also role bindings, the audit log and metrics                    |
//!
//! Cluster-scoped resources (metrics, mesh-wide overrides, cluster-wide bindings) need a
//! cluster-wide binding.

use serde::{Deserialize, Serialize};

use super::user::User;
pub use crate::store::values::{Role, RoleBinding, Subject, SubjectKind};

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether the role grants `verb` on `resource`.
    pub fn allows(self, verb: Verb, resource: Resource) -> bool {
        use Resource::*;
        let read = matches!(verb, Verb::Get | Verb::List)
            && matches!(
                resource,
                ServicePolicies | UpstreamPolicies | Levels | Events | Pods | Status
            );
        match self {
            Role::Viewer => read,
            Role::Editor => {
                read || (matches!(verb, Verb::Apply | Verb::Delete | Verb::Rollback)
                    && matches!(resource, ServicePolicies | UpstreamPolicies))
            }
            Role::Operator => {
                read || (matches!(verb, Verb::Apply | Verb::Delete) && resource == Overrides)
            }
            Role::Admin => true,
        }
    }
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    Get,
    List,
    Apply,
    Delete,
    Rollback,
}

impl Verb {
    pub const ALL: [Verb; 5] = [
        Verb::Get,
        Verb::List,
        Verb::Apply,
        Verb::Delete,
        Verb::Rollback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Apply => "apply",
            Verb::Delete => "delete",
            Verb::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether it changes anything (writes are audited).
    pub fn writes(self) -> bool {
        matches!(self, Verb::Apply | Verb::Delete | Verb::Rollback)
    }
}

/// What a request acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    ServicePolicies,
    UpstreamPolicies,
    Levels,
    Events,
    Pods,
    Status,
    Overrides,
    RoleBindings,
    Audit,
    Metrics,
}

impl Resource {
    pub const ALL: [Resource; 10] = [
        Resource::ServicePolicies,
        Resource::UpstreamPolicies,
        Resource::Levels,
        Resource::Events,
        Resource::Pods,
        Resource::Status,
        Resource::Overrides,
        Resource::RoleBindings,
        Resource::Audit,
        Resource::Metrics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::ServicePolicies => "servicepolicies",
            Resource::UpstreamPolicies => "upstreampolicies",
            Resource::Levels => "levels",
            Resource::Events => "events",
            Resource::Pods => "pods",
            Resource::Status => "status",
            Resource::Overrides => "overrides",
            Resource::RoleBindings => "rolebindings",
            Resource::Audit => "audit",
            Resource::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl Subject {
    /// Whether `user` is this subject.
    pub fn matches(&self, user: &User) -> bool {
        match self.kind {
            SubjectKind::User => user.name == self.name,
            SubjectKind::Group => user.groups.contains(&self.name),
            SubjectKind::ServiceAccount => {
                let namespace = self.namespace.as_deref().unwrap_or_default();
                user.name
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|rest| rest.strip_prefix(namespace))
                    .and_then(|rest| rest.strip_prefix(':'))
                    == Some(self.name.as_str())
            }
        }
    }
}

impl RoleBinding {
    /// What is wrong with it, if anything: each problem naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(ns) = &self.namespace
            && let Err(e) = crate::store::keys::check_segment(ns)
        {
            problems.push(format!("namespace {ns:?}: {e}"));
        }
        if self.subjects.is_empty() {
            problems.push("subjects: at least one is required".to_string());
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if s.name.is_empty() || s.name.len() > 256 || s.name.chars().any(char::is_control) {
                problems.push(format!(
                    "subjects[{i}].name: must be 1 to 256 printable characters"
                ));
            }
            match (s.kind, &s.namespace) {
                (SubjectKind::ServiceAccount, None) => problems.push(format!(
                    "subjects[{i}].namespace: a ServiceAccount subject needs its namespace"
                )),
                (SubjectKind::User | SubjectKind::Group, Some(_)) => problems.push(format!(
                    "subjects[{i}].namespace: only a ServiceAccount subject has a namespace"
                )),
                _ => {}
            }
        }
        problems
    }
}

/// Where a request acts: a namespace, or the whole cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    Namespace(&'a str),
    Cluster,
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Namespace(ns) => write!(f, "in namespace {ns}"),
            Scope::Cluster => f.write_str("cluster-wide"),
        }
    }
}

/// What an audited request was about.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub verb: Verb,
    pub resource: Resource,
    pub scope: Scope<'a>,
    pub name: &'a str,
}

/// Decides requests against the bindings in force.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    /// Members of these groups are administrators everywhere.
    pub admin_groups: Vec<String>,
}

impl Authorizer {
    /// The roles `user` holds, with where each holds.
    pub fn roles<'b>(
        &self,
        user: &User,
        bindings: impl IntoIterator<Item = (&'b String, &'b RoleBinding)>,
    ) -> Vec<(Role, Option<String>)> {
        let mut roles = Vec::new();
        if user.anonymous || user.groups.iter().any(|g| self.admin_groups.contains(g)) {
            roles.push((Role::Admin, None));
        }
        for (_, b) in bindings {
            if b.subjects.iter().any(|s| s.matches(user)) {
                roles.push((b.role, b.namespace.clone()));
            }
        }
        roles.sort();
        roles.dedup();
        roles
    }

    /// `Ok` when `user` may `verb` `resource` at `scope`; else the message of the 403.
    pub fn check<'b>(
        &self,
        user: &User,
        bindings: impl IntoIterator<Item = (&'b String, &'b RoleBinding)> + Clone,
        verb: Verb,
        resource: Resource,
        scope: Scope<'_>,
    ) -> Result<(), String> {
        // The common case, allowed, without allocating: the first binding that grants it.
        if user.anonymous || user.groups.iter().any(|g| self.admin_groups.contains(g)) {
            return Ok(());
        }
        let grants = |b: &RoleBinding| {
            b.role.allows(verb, resource)
                && match (&b.namespace, scope) {
                    (None, _) => true,
                    (Some(ns), Scope::Namespace(wanted)) => ns == wanted,
                    (Some(_), Scope::Cluster) => false,
                }
                && b.subjects.iter().any(|s| s.matches(user))
        };
        if bindings.clone().into_iter().any(|(_, b)| grants(b)) {
            return Ok(());
        }
        let roles = self.roles(user, bindings);
        let held = if roles.is_empty() {
            "no role".to_string()
        } else {
            roles
                .iter()
                .map(|(role, at)| match at {
                    Some(ns) => format!("{} in {ns}", role.as_str()),
                    None => format!("{} cluster-wide", role.as_str()),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(format!(
            "{} may not {} {} {scope} (holds: {held})",
            user.name,
            verb.as_str(),
            resource.as_str()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            method: "token",
            anonymous: false,
        }
    }

    fn bindings() -> BTreeMap<String, RoleBinding> {
        let mut b = BTreeMap::new();
        b.insert(
            "pay-editors".to_string(),
            RoleBinding {
                role: Role::Editor,
                namespace: Some("payments".into()),
                subjects: vec![Subject {
                    kind: SubjectKind::Group,
                    name: "pay-team".into(),
                    namespace: None,
                }],
            },
        );
        b.insert(
            "oncall".to_string(),
            RoleBinding {
                role: Role::Operator,
                namespace: None,
                subjects: vec![Subject {
                    kind: SubjectKind::User,
                    name: "olga".into(),
                    namespace: None,
                }],
            },
        );
        b.insert(
            "ci".to_string(),
            RoleBinding {
                role: Role::Viewer,
                namespace: Some("shop".into()),
                subjects: vec![Subject {
                    kind: SubjectKind::ServiceAccount,
                    name: "deployer".into(),
                    namespace: Some("ci".into()),
                }],
            },
        );
        b
    }

    #[test]
    fn roles_grant_their_verbs_where_they_are_bound_and_nothing_else() {
        let a = Authorizer {
            admin_groups: vec!["bulwark:admins".into()],
        };
        let b = bindings();
        let pat = user("pat", &["pay-team"]);
        assert!(
            a.check(
                &pat,
                &b,
                Verb::Apply,
                Resource::UpstreamPolicies,
                Scope::Namespace("payments")
            )
            .is_ok()
        );
        assert_eq!(
            a.check(
                &pat,
                &b,
                Verb::Apply,
                Resource::UpstreamPolicies,
                Scope::Namespace("shop")
            )
            .unwrap_err(),
            "pat may not apply upstreampolicies in namespace shop (holds: editor in payments)"
        );
        assert!(
            a.check(
                &pat,
                &b,
                Verb::Apply,
                Resource::Overrides,
                Scope::Namespace("payments")
            )
            .is_err()
        );
        let olga = user("olga", &[]);
        assert!(
            a.check(&olga, &b, Verb::Apply, Resource::Overrides, Scope::Cluster)
                .is_ok()
        );
        assert_eq!(
            a.check(
                &olga,
                &b,
                Verb::Apply,
                Resource::ServicePolicies,
                Scope::Namespace("shop")
            )
            .unwrap_err(),
            "olga may not apply servicepolicies in namespace shop (holds: operator cluster-wide)"
        );
        let sa = user("system:serviceaccount:ci:deployer", &[]);
        assert!(
            a.check(
                &sa,
                &b,
                Verb::List,
                Resource::Events,
                Scope::Namespace("shop")
            )
            .is_ok()
        );
        assert!(
            a.check(&sa, &b, Verb::Get, Resource::Metrics, Scope::Cluster)
                .is_err()
        );
        let nobody = user("eve", &[]);
        assert_eq!(
            a.check(
                &nobody,
                &b,
                Verb::Get,
                Resource::Pods,
                Scope::Namespace("shop")
            )
            .unwrap_err(),
            "eve may not get pods in namespace shop (holds: no role)"
        );
        let root = user("root", &["bulwark:admins"]);
        assert!(
            a.check(
                &root,
                &b,
                Verb::Apply,
                Resource::RoleBindings,
                Scope::Cluster
            )
            .is_ok()
        );
    }

    #[test]
    fn bindings_name_what_is_wrong_with_them() {
        let b = RoleBinding {
            role: Role::Viewer,
            namespace: Some("Bad NS".into()),
            subjects: vec![
                Subject {
                    kind: SubjectKind::ServiceAccount,
                    name: "x".into(),
                    namespace: None,
                },
                Subject {
                    kind: SubjectKind::User,
                    name: "a\nb".into(),
                    namespace: Some("x".into()),
                },
            ],
        };
        let problems = b.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[1].starts_with("subjects[0].namespace: a ServiceAccount subject needs"));
    }
}
