//! Degradation levels: the last `Levels` message of the control plane (this pod's own service
//! and the services it calls), indexed for O(1) lookups on the request path, and the pure
//! decisions taken from a level and the ServicePolicy's `actions`: which priorities are shed,
//! how many attempts retries may make, whether an outbound call fails fast.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bulwark_proto::policy::{ServicePolicy, defaults};
use bulwark_proto::v1 as pb;
use http::{HeaderName, HeaderValue};

/// Sent on every request that reaches the app (and on the sidecar's own degradation answers):
/// the level the sidecar acts on.
pub const DEGRADATION_HEADER: HeaderName = HeaderName::from_static("x-bulwark-degradation");

pub use bulwark_proto::level::Level;

/// A level as an `x-bulwark-degradation` value (no allocation).
pub fn level_header(level: Level) -> HeaderValue {
    HeaderValue::from_static(level.as_str())
}

/// A request's priority, from the priority header (`x-priority` unless the ServicePolicy's
/// `inbound.priorityHeader` names another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    Low,
    Normal,
    High,
    Critical,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The priority a policy names (`shedPriorities: [low]`).
    pub fn from_name(name: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The priority a header value gives: `low`, `normal`, `high` or `critical` in any case,
    /// surrounding spaces ignored. A missing or unknown value is `normal`: a caller that says
    /// nothing neither jumps the queue nor volunteers to be shed first.
    pub fn of(value: Option<&HeaderValue>) -> Priority {
        let Some(v) = value else {
            return Priority::Normal;
        };
        let v = v.as_bytes().trim_ascii();
        Priority::ALL
            .into_iter()
            .find(|p| v.eq_ignore_ascii_case(p.as_str().as_bytes()))
            .unwrap_or(Priority::Normal)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the own ServicePolicy says to do at each level (`actions`), with the `inbound`
/// settings shedding needs; compiled once per snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceActions {
    /// The header callers give their priority in (inbound and outbound alike).
    pub priority_header: HeaderName,
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
        retry_after_secs(self.shed_retry_after)
    }
}

/// Whole seconds for `Retry-After`: rounded up so a caller never comes back early, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// An outbound call fails fast, without any attempt, when the upstream's service is at
/// EMERGENCY and the call is low priority: its callers' sidecars keep the little capacity left
/// for the calls that matter.
pub fn fails_fast(upstream_level: Level, priority: Priority) -> bool {
    upstream_level == Level::Emergency && priority == Priority::Low
}

/// An operator's forced level, as the control plane describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub level: Level,
    pub reason: String,
    pub by: String,
    pub expires_unix_ms: i64,
    pub mesh: bool,
}

/// One service's level as the control plane sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLevel {
    pub namespace: String,
    pub service: String,
    pub level: Level,
    pub capabilities: BTreeMap<String, bool>,
    pub reasons: Vec<String>,
    pub unready_pods: Vec<String>,
    pub since_unix_ms: i64,
    pub overridden: Option<Override>,
}

impl ServiceLevel {
    pub fn from_wire(s: &pb::ServiceLevel) -> ServiceLevel {
        ServiceLevel {
            namespace: s.namespace.clone(),
            service: s.service.clone(),
            level: Level::from_wire(s.level),
            capabilities: s
                .capabilities
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            reasons: s.reasons.clone(),
            unready_pods: s.unready_pods.clone(),
            since_unix_ms: s.since_unix_ms,
            overridden: s.r#override.as_ref().map(|o| Override {
                level: Level::from_wire(o.level),
                reason: o.reason.clone(),
                by: o.by.clone(),
                expires_unix_ms: o.expires_unix_ms,
                mesh: o.mesh,
            }),
        }
    }
}

/// The last `Levels` message, indexed: this pod's own service apart, every service's level by
/// namespace then name (looked up with `&str`, without building a key).
#[derive(Debug, Default)]
pub struct LevelIndex {
    own: Option<ServiceLevel>,
    levels: HashMap<String, HashMap<String, Level>>,
    /// Whether any listed service is at EMERGENCY: lets the outbound gate skip the lookup.
    any_emergency: bool,
    /// Received from the control plane since start (not restored from disk, not the default).
    live: bool,
}

impl LevelIndex {
    /// Indexes a `Levels` message for the sidecar of `namespace`/`service`. Each message
    /// replaces the previous one whole; a service not listed is NORMAL.
    pub fn from_wire(levels: &pb::Levels, namespace: &str, service: Option<&str>) -> LevelIndex {
        let mut index = LevelIndex {
            live: true,
            ..LevelIndex::default()
        };
        for s in &levels.services {
            let level = Level::from_wire(s.level);
            index.any_emergency |= level == Level::Emergency;
            index
                .levels
                .entry(s.namespace.clone())
                .or_default()
                .insert(s.service.clone(), level);
            if s.namespace == namespace && service == Some(s.service.as_str()) {
                index.own = Some(ServiceLevel::from_wire(s));
            }
        }
        index
    }

    /// The own service's level: NORMAL when none is known.
    pub fn own_level(&self) -> Level {
        self.own.as_ref().map_or(Level::Normal, |s| s.level)
    }

    /// The own service's entry, when the control plane sent one.
    pub fn own(&self) -> Option<&ServiceLevel> {
        self.own.as_ref()
    }

    /// The level of a called service: NORMAL when not listed.
    pub fn level_of(&self, namespace: &str, name: &str) -> Level {
        self.levels
            .get(namespace)
            .and_then(|by_name| by_name.get(name))
            .copied()
            .unwrap_or(Level::Normal)
    }

    /// Whether some listed service is at EMERGENCY.
    pub fn any_emergency(&self) -> bool {
        self.any_emergency
    }

    /// The `/capabilities` document: the own service's level, capabilities, reasons, since
    /// when and override; NORMAL with empty maps when no level is known.
    pub fn capabilities_json(&self) -> serde_json::Value {
        match &self.own {
            None => serde_json::json!({
                "level": Level::Normal.as_str(),
                "capabilities": {},
                "reasons": [],
                "since": null,
                "override": null,
            }),
            Some(s) => serde_json::json!({
                "level": s.level.as_str(),
                "capabilities": s.capabilities,
                "reasons": s.reasons,
                "since": s.since_unix_ms,
                "override": s.overridden.as_ref().map(|o| serde_json::json!({
                    "level": o.level.as_str(),
                    "reason": o.reason,
                    "by": o.by,
                    "expiresUnixMs": o.expires_unix_ms,
                    "mesh": o.mesh,
                })),
            }),
        }
    }
}

/// The degradation state requests read: the levels in force and the retry cap derived from
/// the own level and the ServicePolicy. Written by the control-plane stream, read lock-free.
#[derive(Debug, Default)]
pub struct Degradation {
    levels: ArcSwap<LevelIndex>,
    /// The own level's `maxRetryAttempts`; 0 = no cap.
    retry_cap: AtomicU32,
}

impl Degradation {
    /// The levels in force (a cheap, lock-free load).
    pub fn levels(&self) -> arc_swap::Guard<Arc<LevelIndex>> {
        self.levels.load()
    }

    /// Replaces the levels in force; returns the previous ones.
    pub fn swap(&self, index: LevelIndex) -> Arc<LevelIndex> {
        self.levels.swap(Arc::new(index))
    }

    /// Puts levels persisted by a previous run in force, unless the control plane sent some
    /// since start (those are newer). Returns the levels replaced when it did.
    pub fn restore(&self, mut index: LevelIndex) -> Option<Arc<LevelIndex>> {
        index.live = false;
        let current = self.levels.load_full();
        if current.live {
            return None;
        }
        let previous = self.levels.compare_and_swap(&current, Arc::new(index));
        Arc::ptr_eq(&previous, &current).then_some(current)
    }

    /// The cap on outbound `maxAttempts`, if the own level has one.
    pub fn retry_cap(&self) -> Option<u32> {
        match self.retry_cap.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub fn set_retry_cap(&self, cap: Option<u32>) {
        // A cap of 0 would mean "no attempt"; validation keeps it in 1..=100, and one attempt
        // is the least a request gets.
        let v = cap.map_or(0, |c| c.max(1));
        self.retry_cap.store(v, Ordering::Relaxed);
    }

    /// Applies a level's cap to a route's `maxAttempts`.
    pub fn cap_attempts(&self, route_attempts: u32) -> u32 {
        match self.retry_cap() {
            Some(cap) => route_attempts.min(cap),
            None => route_attempts,
        }
    }
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

    fn hv(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn priorities_parse_leniently_and_default_to_normal() {
        assert_eq!(Priority::of(None), Priority::Normal);
        assert_eq!(Priority::of(Some(&hv("low"))), Priority::Low);
        assert_eq!(Priority::of(Some(&hv(" HIGH "))), Priority::High);
        assert_eq!(Priority::of(Some(&hv("Critical"))), Priority::Critical);
        assert_eq!(Priority::of(Some(&hv("normal"))), Priority::Normal);
        assert_eq!(Priority::of(Some(&hv("urgent"))), Priority::Normal);
        assert_eq!(Priority::of(Some(&hv(""))), Priority::Normal);
        assert_eq!(Priority::of(Some(&hv("lowest"))), Priority::Normal);
    }

    #[test]
    fn levels_from_names_and_wire_values() {
        assert_eq!(Level::from_name("SEVERE"), Some(Level::Severe));
        assert_eq!(Level::from_name("severe"), None);
        assert_eq!(Level::from_wire(0), Level::Normal);
        assert_eq!(Level::from_wire(1), Level::Degraded);
        assert_eq!(Level::from_wire(3), Level::Emergency);
        assert_eq!(Level::from_wire(42), Level::Emergency, "unknown is worst");
        assert!(Level::Normal < Level::Degraded && Level::Severe < Level::Emergency);
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

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
        assert_eq!(retry_after_secs(Duration::from_millis(250)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(30_001)), 31);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn restored_levels_never_replace_live_ones() {
        let d = Degradation::default();
        let severe = pb::Levels {
            services: vec![wire_level("shop", "orders", pb::Level::Severe)],
        };
        let emergency = pb::Levels {
            services: vec![wire_level("shop", "orders", pb::Level::Emergency)],
        };
        let index = |l: &pb::Levels| LevelIndex::from_wire(l, "shop", Some("orders"));
        assert!(d.restore(index(&severe)).is_some());
        assert_eq!(d.levels().own_level(), Level::Severe);
        d.swap(index(&emergency));
        assert!(d.restore(index(&severe)).is_none(), "the live levels stay");
        assert_eq!(d.levels().own_level(), Level::Emergency);
    }

    #[test]
    fn the_retry_cap_only_lowers_max_attempts() {
        let d = Degradation::default();
        assert_eq!(d.cap_attempts(5), 5);
        d.set_retry_cap(Some(2));
        assert_eq!(d.retry_cap(), Some(2));
        assert_eq!(d.cap_attempts(5), 2);
        assert_eq!(d.cap_attempts(1), 1);
        d.set_retry_cap(Some(0));
        assert_eq!(d.cap_attempts(5), 1, "never below one attempt");
        d.set_retry_cap(None);
        assert_eq!(d.cap_attempts(5), 5);
    }

    fn wire_level(ns: &str, service: &str, level: pb::Level) -> pb::ServiceLevel {
        pb::ServiceLevel {
            namespace: ns.into(),
            service: service.into(),
            level: level as i32,
            ..Default::default()
        }
    }

    #[test]
    fn the_index_finds_the_own_service_and_called_services() {
        let mut own = wire_level("shop", "orders", pb::Level::Severe);
        own.capabilities.insert("acceptOrders".into(), false);
        own.capabilities.insert("sendNotifications".into(), true);
        own.reasons = vec!["payments unhealthy".into(), "dispatch unhealthy".into()];
        own.since_unix_ms = 1_700_000_000_000;
        let levels = pb::Levels {
            services: vec![
                own,
                wire_level("payments", "midtrans", pb::Level::Emergency),
                wire_level("shop", "dispatch", pb::Level::Degraded),
            ],
        };
        let index = LevelIndex::from_wire(&levels, "shop", Some("orders"));
        assert_eq!(index.own_level(), Level::Severe);
        assert_eq!(index.level_of("payments", "midtrans"), Level::Emergency);
        assert_eq!(index.level_of("shop", "dispatch"), Level::Degraded);
        assert_eq!(index.level_of("shop", "midtrans"), Level::Normal);
        assert_eq!(index.level_of("other", "x"), Level::Normal);
        assert!(index.any_emergency());
        assert_eq!(
            index.capabilities_json(),
            serde_json::json!({
                "level": "SEVERE",
                "capabilities": { "acceptOrders": false, "sendNotifications": true },
                "reasons": ["payments unhealthy", "dispatch unhealthy"],
                "since": 1_700_000_000_000i64,
                "override": null,
            })
        );

        // Another service's sidecar sees the same message without an own level.
        let theirs = LevelIndex::from_wire(&levels, "shop", Some("cart"));
        assert_eq!(theirs.own_level(), Level::Normal);
        assert!(theirs.own().is_none());
    }

    #[test]
    fn overrides_are_shown_and_no_level_is_normal() {
        let mut own = wire_level("shop", "orders", pb::Level::Emergency);
        own.r#override = Some(pb::Override {
            level: pb::Level::Emergency as i32,
            reason: "drill".into(),
            by: "alice".into(),
            expires_unix_ms: 5,
            mesh: false,
        });
        let index = LevelIndex::from_wire(
            &pb::Levels {
                services: vec![own],
            },
            "shop",
            Some("orders"),
        );
        assert_eq!(
            index.capabilities_json()["override"],
            serde_json::json!({"level": "EMERGENCY", "reason": "drill", "by": "alice", "expiresUnixMs": 5, "mesh": false})
        );
        assert_eq!(
            LevelIndex::default().capabilities_json(),
            serde_json::json!({"level": "NORMAL", "capabilities": {}, "reasons": [], "since": null, "override": null})
        );
    }
}
