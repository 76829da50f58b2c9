//! The state of a circuit breaker, as the sidecar runs it, the health reports carry it, the
//! control plane stores it and `meshctl` shows it: one type, so its names and wire mapping are
//! defined once.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::v1 as pb;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls go through; outcomes are counted.
    #[default]
    Closed,
    /// Calls fail fast without reaching the upstream.
    Open,
    /// A few probe calls go through to see whether the upstream recovered.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half-open`, as metrics, logs and the APIs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    pub fn to_wire(self) -> pb::BreakerState {
        match self {
            BreakerState::Closed => pb::BreakerState::Closed,
            BreakerState::Open => pb::BreakerState::Open,
            BreakerState::HalfOpen => pb::BreakerState::HalfOpen,
        }
    }

    /// The state a report carries; an unknown value is closed (it says nothing is open).
    pub fn from_wire(value: i32) -> BreakerState {
        match pb::BreakerState::try_from(value) {
            Ok(pb::BreakerState::Open) => BreakerState::Open,
            Ok(pb::BreakerState::HalfOpen) => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wire_values_round_trip() {
        for s in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            assert_eq!(BreakerState::from_wire(s.to_wire() as i32), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(BreakerState::from_wire(42), BreakerState::Closed);
    }
}
