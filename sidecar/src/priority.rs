//! A request's priority, from the priority header: what degradation levels shed first and
//! which calls to an EMERGENCY upstream fail fast.

use std::fmt;

use http::HeaderValue;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
