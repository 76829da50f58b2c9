//! References between policies: the UpstreamPolicies a resource names — its failover targets,
//! a ServicePolicy's dependencies — resolved to a namespace, with the field that names each.
//! What the control plane checks when one is applied (a failover target must exist) and when
//! one is deleted (nothing may still name it).

use super::model::{Kind, Resource};

/// One UpstreamPolicy named from a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The field that names it: `spec.fallback.failover[0]`, `spec.dependencies.payments`.
    pub path: String,
    pub namespace: String,
    pub name: String,
    /// Whether the named policy must exist when the resource is applied: a failover target
    /// must (a request would fail over to nothing); a dependency need not yet (the service may
    /// be set up before what it calls).
    pub required: bool,
}

impl Reference {
    /// `UpstreamPolicy/namespace/name`, as errors name the target.
    pub fn target(&self) -> String {
        format!("{}/{}/{}", Kind::UpstreamPolicy, self.namespace, self.name)
    }
}

/// `name` (in `namespace`) or `name.namespace`: the name and namespace it means.
pub fn resolve<'a>(text: &'a str, namespace: &'a str) -> (&'a str, &'a str) {
    text.split_once('.').unwrap_or((text, namespace))
}

/// Every UpstreamPolicy `resource` names, in the order it names them.
pub fn references(resource: &Resource) -> Vec<Reference> {
    let namespace = &resource.metadata().namespace;
    let reference = |path: String, text: &str, required| {
        let (name, ns) = resolve(text, namespace);
        Reference {
            path,
            namespace: ns.to_string(),
            name: name.to_string(),
            required,
        }
    };
    match resource {
        Resource::UpstreamPolicy(p) => p
            .spec
            .fallback
            .iter()
            .flat_map(|f| f.failover.iter().enumerate())
            .map(|(i, t)| reference(format!("spec.fallback.failover[{i}]"), t, true))
            .collect(),
        Resource::ServicePolicy(p) => p
            .spec
            .dependencies
            .keys()
            .map(|d| reference(format!("spec.dependencies.{d}"), d, false))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_yaml;

    fn one(yaml: &str) -> Resource {
        parse_yaml(yaml).expect("parses").remove(0)
    }

    #[test]
    fn failover_targets_and_dependencies_are_named_with_their_fields() {
        let upstream = one(
            "apiVersion: bulwark/v1\nkind: UpstreamPolicy\nmetadata: { name: checkout, namespace: shop }\nspec:\n  endpoints: { dns: checkout:80 }\n  fallback: { failover: [payments, backup.payments-dr] }\n",
        );
        let refs = references(&upstream);
        assert_eq!(
            refs.iter()
                .map(|r| (r.path.as_str(), r.target(), r.required))
                .collect::<Vec<_>>(),
            [
                (
                    "spec.fallback.failover[0]",
                    "UpstreamPolicy/shop/payments".to_string(),
                    true
                ),
                (
                    "spec.fallback.failover[1]",
                    "UpstreamPolicy/payments-dr/backup".to_string(),
                    true
                ),
            ]
        );
        let service = one(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: { name: orders, namespace: shop }\nspec:\n  dependencies: { payments: { critical: true }, stock.inventory: {} }\n",
        );
        assert_eq!(
            references(&service)
                .iter()
                .map(|r| (r.path.as_str(), r.target(), r.required))
                .collect::<Vec<_>>(),
            [
                (
                    "spec.dependencies.payments",
                    "UpstreamPolicy/shop/payments".to_string(),
                    false
                ),
                (
                    "spec.dependencies.stock.inventory",
                    "UpstreamPolicy/inventory/stock".to_string(),
                    false
                ),
            ]
        );
    }
}
