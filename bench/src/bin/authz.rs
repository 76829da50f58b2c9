//! `bulwark-authz-bench`: what one authorisation decision costs the operator API — the role
//! check every request makes against the role bindings in force — with 100 bindings (users,
//! groups, service accounts, namespaced and cluster-wide), for an allowed and a denied request.

use std::collections::BTreeMap;
use std::time::Instant;

use bulwark_control_plane::auth::User;
use bulwark_control_plane::auth::rbac::{
    Authorizer, Resource, Role, RoleBinding, Scope, Subject, SubjectKind, Verb,
};

fn main() {
    let mut bindings = BTreeMap::new();
    for i in 0..100 {
        let (kind, name, namespace) = match i % 3 {
            0 => (SubjectKind::User, format!("user-{i}"), None),
            1 => (SubjectKind::Group, format!("team-{i}"), None),
            _ => (
                SubjectKind::ServiceAccount,
                format!("sa-{i}"),
                Some("ci".to_string()),
            ),
        };
        bindings.insert(
            format!("binding-{i}"),
            RoleBinding {
                role: [Role::Viewer, Role::Editor, Role::Operator][i % 3],
                namespace: (i % 2 == 0).then(|| format!("ns-{i}")),
                subjects: vec![Subject {
                    kind,
                    name,
                    namespace,
                }],
            },
        );
    }
    let authorizer = Authorizer {
        admin_groups: vec!["bulwark:admins".into()],
    };
    let user = User {
        name: "user-42".into(),
        groups: vec!["team-43".into(), "team-97".into()],
        method: "token",
        anonymous: false,
    };
    let rounds = 1_000_000u32;
    for (what, verb, scope) in [
        (
            "allowed (editor in ns-42)",
            Verb::Apply,
            Scope::Namespace("ns-42"),
        ),
        ("denied", Verb::Delete, Scope::Namespace("ns-7")),
    ] {
        let started = Instant::now();
        let mut allowed = 0u32;
        for _ in 0..rounds {
            let decision = authorizer.check(
                std::hint::black_box(&user),
                bindings.iter(),
                verb,
                Resource::UpstreamPolicies,
                scope,
            );
            allowed += u32::from(decision.is_ok());
        }
        let per = started.elapsed().as_secs_f64() * 1e9 / f64::from(rounds);
        println!("{what}: {per:.0} ns per decision over 100 bindings ({allowed} allowed)");
    }
}
