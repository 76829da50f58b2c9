//! Who may call the local app: whether callers must use mutual TLS (`spec.inbound.mtls`, else
//! the sidecar's `--inbound-mtls`) and which verified callers a request may come from
//! (`spec.inbound.authorization`), compiled once per snapshot and checked for every inbound
//! request before it is routed.

use std::collections::HashSet;

use bulwark_identity::SpiffeId;
use bulwark_proto::policy::{Authorization, Callers, MtlsMode, ServicePolicy};

use crate::policy_stack::routes::Matcher;

/// The inbound access rules in force.
#[derive(Debug, Default)]
pub struct InboundAccess {
    pub mtls: MtlsMode,
    /// `ServicePolicy namespace/name` (or the sidecar's flags), for messages.
    pub source: String,
    authorization: Option<Rules>,
}

#[derive(Debug)]
struct Rules {
    dry_run: bool,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    /// `None`: any caller, with an identity or without.
    from: Option<From>,
    /// Empty: any request.
    to: Vec<Matcher>,
}

#[derive(Debug)]
struct From {
    identities: HashSet<String>,
    /// `(namespace, service account)`.
    service_accounts: Vec<(String, String)>,
    namespaces: Vec<String>,
}

/// What authorization decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No authorization configured.
    Open,
    Allowed,
    Denied,
    /// Denied by the rules, allowed because they run in `dryRun`.
    DryRunDenied,
}

impl Decision {
    pub fn label(self) -> &'static str {
        match self {
            Decision::Open => "open",
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::DryRunDenied => "dry-run-denied",
        }
    }
}

impl InboundAccess {
    /// The rules of the own ServicePolicy, `default_mtls` where it sets none.
    pub fn compile(service: Option<&ServicePolicy>, default_mtls: MtlsMode) -> InboundAccess {
        let inbound = service.and_then(|s| s.spec.inbound.as_ref());
        InboundAccess {
            mtls: inbound.and_then(|i| i.mtls).unwrap_or(default_mtls),
            source: match service {
                Some(s) => format!("ServicePolicy {}/{}", s.metadata.namespace, s.metadata.name),
                None => "the sidecar's defaults".into(),
            },
            authorization: inbound
                .and_then(|i| i.authorization.as_ref())
                .map(Rules::compile),
        }
    }

    /// Whether `caller` (`None`: no verified identity) may send this request.
    pub fn decide(
        &self,
        caller: Option<&SpiffeId>,
        method: &http::Method,
        path: &str,
        grpc: bool,
    ) -> Decision {
        let Some(auth) = &self.authorization else {
            return Decision::Open;
        };
        let allowed = auth.rules.iter().any(|rule| {
            rule.from.as_ref().is_none_or(|f| f.admits(caller))
                && (rule.to.is_empty() || rule.to.iter().any(|m| m.matches(method, path, grpc)))
        });
        match (allowed, auth.dry_run) {
            (true, _) => Decision::Allowed,
            (false, false) => Decision::Denied,
            (false, true) => Decision::DryRunDenied,
        }
    }

    /// How many rules there are, for the denial message.
    pub fn rule_count(&self) -> usize {
        self.authorization.as_ref().map_or(0, |a| a.rules.len())
    }
}

impl Rules {
    fn compile(a: &Authorization) -> Rules {
        Rules {
            dry_run: a.dry_run,
            rules: a
                .rules
                .iter()
                .map(|r| Rule {
                    from: r.from.as_ref().map(From::compile),
                    // A match that can never hold (validated policies have none) stays out, so
                    // its rule cannot turn into "any request".
                    to: r.to.iter().filter_map(Matcher::compile).collect(),
                })
                .filter(|r| !(r.to.is_empty() && r.from.is_none()))
                .collect(),
        }
    }
}

impl From {
    fn compile(c: &Callers) -> From {
        From {
            identities: c.identities.iter().cloned().collect(),
            service_accounts: c
                .service_accounts
                .iter()
                .filter_map(|sa| sa.split_once('/'))
                .map(|(ns, name)| (ns.to_string(), name.to_string()))
                .collect(),
            namespaces: c.namespaces.clone(),
        }
    }

    /// A caller without a verified identity is never one of the listed callers.
    fn admits(&self, caller: Option<&SpiffeId>) -> bool {
        let Some(id) = caller else { return false };
        self.identities.contains(&id.to_string())
            || self
                .service_accounts
                .iter()
                .any(|(ns, sa)| ns == id.namespace() && sa == id.service_account())
            || self.namespaces.iter().any(|ns| ns == id.namespace())
    }
}

#[cfg(test)]
mod tests {
    use bulwark_proto::policy::{Resource, parse_yaml};
    use http::Method;

    use super::*;

    fn access(inbound: &str) -> InboundAccess {
        let yaml = format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: payments, namespace: pay }}\nspec:\n  inbound:\n{inbound}"
        );
        let resources = parse_yaml(&yaml).expect("a policy");
        let Resource::ServicePolicy(p) = &resources[0] else {
            panic!("a ServicePolicy")
        };
        Resource::ServicePolicy(p.clone())
            .validate()
            .expect("a valid policy");
        InboundAccess::compile(Some(p), MtlsMode::Permissive)
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa).expect("an identity")
    }

    const RULES: &str = "    authorization:\n      rules:\n        - from: { serviceAccounts: [shop/orders] }\n          to: [{ grpcMethod: /pay.v1.Payments/ }, { pathPrefix: /charge, method: POST }]\n        - from: { namespaces: [ops], identities: [\"spiffe://cluster.local/ns/shop/sa/audit\"] }\n        - to: [{ path: /health }]\n";

    #[test]
    fn callers_and_requests_must_both_match_a_rule() {
        let a = access(RULES);
        let orders = id("shop", "orders");
        let decide = |caller: Option<&SpiffeId>, method: Method, path: &str, grpc: bool| {
            a.decide(caller, &method, path, grpc)
        };
        assert_eq!(a.mtls, MtlsMode::Permissive);
        assert_eq!(a.source, "ServicePolicy pay/payments");
        assert_eq!(a.rule_count(), 3);
        assert_eq!(
            decide(Some(&orders), Method::POST, "/pay.v1.Payments/Charge", true),
            Decision::Allowed
        );
        assert_eq!(
            decide(Some(&orders), Method::POST, "/charge/42", false),
            Decision::Allowed
        );
        assert_eq!(
            decide(Some(&orders), Method::GET, "/charge/42", false),
            Decision::Denied,
            "the method is not allowed"
        );
        assert_eq!(
            decide(Some(&id("other", "orders")), Method::POST, "/charge", false),
            Decision::Denied,
            "the same service account in another namespace"
        );
        assert_eq!(
            decide(Some(&id("ops", "anyone")), Method::DELETE, "/x", false),
            Decision::Allowed,
            "a whole namespace, any request"
        );
        assert_eq!(
            decide(Some(&id("shop", "audit")), Method::GET, "/x", false),
            Decision::Allowed
        );
        assert_eq!(
            decide(None, Method::POST, "/charge", false),
            Decision::Denied,
            "no identity is no listed caller"
        );
        assert_eq!(
            decide(None, Method::GET, "/health", false),
            Decision::Allowed,
            "a rule without from admits callers without identity"
        );
    }

    #[test]
    fn dry_run_reports_denials_without_denying_and_no_rules_is_open() {
        let a = access(&format!("    mtls: strict\n{}      dryRun: true\n", RULES));
        assert_eq!(a.mtls, MtlsMode::Strict);
        assert_eq!(
            a.decide(Some(&id("x", "y")), &Method::GET, "/", false),
            Decision::DryRunDenied
        );
        let open = InboundAccess::compile(None, MtlsMode::Strict);
        assert_eq!(open.mtls, MtlsMode::Strict);
        assert_eq!(open.source, "the sidecar's defaults");
        assert_eq!(open.decide(None, &Method::GET, "/", false), Decision::Open);
    }
}
