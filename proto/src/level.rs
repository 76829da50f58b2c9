//! The degradation level of a service, as policies, the control plane, the sidecar and `meshctl`
//! all name it: one type, so its spelling, order and wire mapping are defined once.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::v1 as pb;

/// A service's degradation level, from the least to the most degraded.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    #[default]
    Normal,
    Degraded,
    Severe,
    Emergency,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Normal,
        Level::Degraded,
        Level::Severe,
        Level::Emergency,
    ];

    /// The name policies, headers and the APIs use (`SEVERE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "NORMAL",
            Level::Degraded => "DEGRADED",
            Level::Severe => "SEVERE",
            Level::Emergency => "EMERGENCY",
        }
    }

    /// 0 (NORMAL) to 3 (EMERGENCY): array index and gauge value.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The level a policy key names exactly (`actions.<LEVEL>`).
    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == name)
    }

    /// Parses a level name in any case (`emergency`, `Severe`).
    pub fn parse(text: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(text))
    }

    pub fn to_pb(self) -> pb::Level {
        match self {
            Level::Normal => pb::Level::Normal,
            Level::Degraded => pb::Level::Degraded,
            Level::Severe => pb::Level::Severe,
            Level::Emergency => pb::Level::Emergency,
        }
    }

    pub fn from_pb(level: pb::Level) -> Level {
        match level {
            pb::Level::Normal => Level::Normal,
            pb::Level::Degraded => Level::Degraded,
            pb::Level::Severe => Level::Severe,
            pb::Level::Emergency => Level::Emergency,
        }
    }

    /// The level of a wire enum value. A value this build does not know (a newer peer) is taken
    /// as the worst one it knows: acting as if things were fine would be the riskier mistake.
    pub fn from_wire(value: i32) -> Level {
        pb::Level::try_from(value).map_or(Level::Emergency, Level::from_pb)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_order_and_wire_round_trip() {
        for (i, level) in Level::ALL.into_iter().enumerate() {
            assert_eq!(level.index(), i);
            assert_eq!(Level::from_name(level.as_str()), Some(level));
            assert_eq!(Level::parse(&level.as_str().to_lowercase()), Some(level));
            assert_eq!(Level::from_pb(level.to_pb()), level);
            assert_eq!(Level::from_wire(level.to_pb() as i32), level);
            assert_eq!(
                serde_json::to_string(&level).expect("json"),
                format!("\"{level}\"")
            );
        }
        assert!(Level::Normal < Level::Emergency);
        assert_eq!(Level::from_name("severe"), None);
        assert_eq!(Level::parse("CRITICAL"), None);
        assert_eq!(Level::from_wire(99), Level::Emergency);
    }
}
