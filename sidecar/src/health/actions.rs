//! What a degradation level makes the sidecar do, from the own ServicePolicy's `actions` and
//! `inbound` settings, compiled once per snapshot: which priorities are shed, how many attempts
//! retries may make, and when an outbound call fails fast.

use std::time::Duration;

use bulwark_proto::level::Level;
use bulwark_proto::policy::{ServicePolicy, defaults};
use http::HeaderName;

use crate::priority::Priority;

/// What the own ServicePolicy says to do at each level (`actions`), with the `inbound`
/// settings shedding needs; compiled once per snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceActions {
    /// The header callers give their priority in (inbound and outbound alike).
    pub priority_header: HeaderName,
    /// The header callers give their criticality in, and it travels on in.
    pub criticality_header: HeaderName,
    /// `Retry-After` of a shed request.
    pub shed_retry_after: Duration,
    /// Bit `p` set at index `l`: priority `p` is shed at level `l`.
    shed: [u8; 4],
    /// `maxRetryAttempts` per level.
    max_retry_attempts: [Option<u32>; 4],
}

impl Default for ServiceActions {
    fn default() -> Self {
        ServiceActions {
            priority_header: HeaderName::from_static(defaults::PRIORITY_HEADER),
            criticality_header: HeaderName::from_static(defaults::CRITICALITY_HEADER),
            shed_retry_after: defaults::SHED_RETRY_AFTER,
            shed: [0; 4],
            max_retry_attempts: [None; 4],
        }
    }
}

impl ServiceActions {
    /// The actions without a ServicePolicy, shared.
    pub fn defaults() -> &'static ServiceActions {
        static DEFAULTS: std::sync::LazyLock<ServiceActions> =
            std::sync::LazyLock::new(ServiceActions::default);
        &DEFAULTS
    }

    /// The actions of a validated ServicePolicy; defaults (nothing shed, no cap) without one.
    /// Unknown level or priority names cannot occur after validation and are skipped.
    pub fn from_policy(policy: Option<&ServicePolicy>) -> ServiceActions {
        let mut actions = ServiceActions::default();
        let Some(spec) = policy.map(|p| &p.spec) else {
            return actions;
        };
        if let Some(inbound) = &spec.inbound {
            if let Some(h) = inbound
                .priority_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            {
                actions.priority_header = h;
            }
            if let Some(h) = inbound
                .criticality_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            {
                actions.criticality_header = h;
            }
            if let Some(d) = &inbound.shed_retry_after {
                actions.shed_retry_after = d.get();
            }
        }
        for (name, a) in &spec.actions {
            let Some(level) = Level::from_name(name) else {
                continue;
            };
            actions.shed[level.index()] = a
                .shed_priorities
                .iter()
                .filter_map(|p| Priority::from_name(p))
                .fold(0, |bits, p| bits | 1 << p.index());
            actions.max_retry_attempts[level.index()] = a.max_retry_attempts;
        }
        actions
    }

    /// Whether an inbound request of `priority` is shed at `level`.
    pub fn sheds(&self, level: Level, priority: Priority) -> bool {
        self.shed[level.index()] & (1 << priority.index()) != 0
    }

    /// The cap on every outbound upstream's `maxAttempts` at `level`, if the level has one.
    pub fn retry_cap(&self, level: Level) -> Option<u32> {
        self.max_retry_attempts[level.index()]
    }

    /// `Retry-After` of a shed request in whole seconds (rounded up, at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        crate::headers::retry_after_secs(self.shed_retry_after)
    }
}

/// An outbound call fails fast, without any attempt, when the upstream's service is at
/// EMERGENCY and the call is low priority: its callers' sidecars keep the little capacity left
/// for the calls that matter.
pub fn fails_fast(upstream_level: Level, priority: Priority) -> bool {
    upstream_level == Level::Emergency && priority == Priority::Low
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_proto::policy::{Resource, parse_yaml};

    fn service_policy(yaml_spec: &str) -> ServicePolicy {
        let yaml = format!(
            "apiVersion: bulwark/v1\nkind: ServicePolicy\nmetadata: {{ name: orders, namespace: shop }}\nspec: {yaml_spec}\n"
        );
        match parse_yaml(&yaml).unwrap().remove(0) {
            Resource::ServicePolicy(p) => p,
            other => panic!("not a ServicePolicy: {other:?}"),
        }
    }

    #[test]
    fn shedding_follows_the_actions_of_each_level() {
        let actions = ServiceActions::from_policy(Some(&service_policy(
            "{ actions: { SEVERE: { shedPriorities: [low], maxRetryAttempts: 2 }, EMERGENCY: { shedPriorities: [low, normal], maxRetryAttempts: 1, ready: false } }, inbound: { priorityHeader: x-prio, shedRetryAfter: 1500ms } }",
        )));
        assert_eq!(actions.priority_header.as_str(), "x-prio");
        assert_eq!(actions.shed_retry_after, Duration::from_millis(1500));
        assert_eq!(actions.retry_after_secs(), 2, "rounded up");
        let shed = |level| {
            Priority::ALL
                .into_iter()
                .filter(|p| actions.sheds(level, *p))
                .collect::<Vec<_>>()
        };
        assert_eq!(shed(Level::Normal), []);
        assert_eq!(shed(Level::Degraded), []);
        assert_eq!(shed(Level::Severe), [Priority::Low]);
        assert_eq!(shed(Level::Emergency), [Priority::Low, Priority::Normal]);
        assert_eq!(actions.retry_cap(Level::Normal), None);
        assert_eq!(actions.retry_cap(Level::Severe), Some(2));
        assert_eq!(actions.retry_cap(Level::Emergency), Some(1));
    }

    #[test]
    fn without_a_service_policy_nothing_is_shed() {
        let actions = ServiceActions::from_policy(None);
        assert_eq!(actions.priority_header.as_str(), "x-priority");
        assert_eq!(actions.retry_after_secs(), 30);
        for level in Level::ALL {
            for p in Priority::ALL {
                assert!(!actions.sheds(level, p));
            }
            assert_eq!(actions.retry_cap(level), None);
        }
        let defaults_only = ServiceActions::from_policy(Some(&service_policy("{}")));
        assert_eq!(defaults_only, actions);
    }

    #[test]
    fn only_low_priority_calls_to_an_emergency_upstream_fail_fast() {
        for level in Level::ALL {
            for p in Priority::ALL {
                assert_eq!(
                    fails_fast(level, p),
                    level == Level::Emergency && p == Priority::Low,
                    "{level} {p}"
                );
            }
        }
    }
}
