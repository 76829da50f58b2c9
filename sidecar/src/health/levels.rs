//! Degradation levels: the last `Levels` message of the control plane (this pod's own service
//! and the services it calls), indexed for O(1) lookups on the request path, and the
//! [`Degradation`] state requests read lock-free (levels and the retry cap they set). What a
//! level makes the sidecar do is [`actions`](super::actions)'.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use arc_swap::ArcSwap;
use bulwark_proto::level::Level;
use bulwark_proto::v1 as pb;
use http::HeaderValue;

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
    /// The service's pods with current health reports (0: not known).
    pub reporting_pods: u32,
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
            reporting_pods: s.reporting_pods,
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
    /// The own capabilities as the `x-bulwark-capabilities` value, built once per message.
    capabilities_header: Option<HeaderValue>,
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
                let own = ServiceLevel::from_wire(s);
                index.capabilities_header = capabilities_value(&own.capabilities);
                index.own = Some(own);
            }
        }
        index
    }

    /// The own service's level: NORMAL when none is known.
    pub fn own_level(&self) -> Level {
        self.own.as_ref().map_or(Level::Normal, |s| s.level)
    }

    /// The own service's pods with current health reports, at least 1: what a mesh-wide rate
    /// limit is split across.
    pub fn own_pods(&self) -> u32 {
        self.own.as_ref().map_or(1, |s| s.reporting_pods.max(1))
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

    /// The own capabilities as an `x-bulwark-capabilities` value
    /// (`acceptOrders=true,sendNotifications=false`); `None` when the own service has none.
    pub fn capabilities_header(&self) -> Option<&HeaderValue> {
        self.capabilities_header.as_ref()
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

/// `name=true|false` pairs, comma-separated, in name order. Capability names are letters,
/// digits, `-` and `_` (validated), so the value is always a valid header.
fn capabilities_value(capabilities: &BTreeMap<String, bool>) -> Option<HeaderValue> {
    if capabilities.is_empty() {
        return None;
    }
    let text = capabilities
        .iter()
        .map(|(name, holds)| format!("{name}={holds}"))
        .collect::<Vec<_>>()
        .join(",");
    HeaderValue::from_str(&text).ok()
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
        assert_eq!(
            index.capabilities_header().unwrap(),
            "acceptOrders=false,sendNotifications=true"
        );
        let theirs = LevelIndex::from_wire(&levels, "shop", Some("cart"));
        assert_eq!(theirs.own_level(), Level::Normal);
        assert_eq!(theirs.capabilities_header(), None);
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
