//! How much a request matters: its criticality, one of four tiers (Google's), from the
//! criticality header, else from the older priority header (`low`, `normal`, `high`,
//! `critical`, which map one to one onto the tiers), else its route's default. Level shedding
//! (by priority names), the adaptive concurrency queue and its shedding all act on it, and it
//! travels to the next hop in the criticality header.

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
        value.and_then(Priority::parse).unwrap_or(Priority::Normal)
    }

    /// The priority a header value names, in any case, surrounding spaces ignored.
    pub fn parse(value: &HeaderValue) -> Option<Priority> {
        let v = value.as_bytes().trim_ascii();
        Priority::ALL
            .into_iter()
            .find(|p| v.eq_ignore_ascii_case(p.as_str().as_bytes()))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a request matters when there is not capacity for all (Google's criticality tiers),
/// least first: under overload `sheddable` goes first, `critical-plus` last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Criticality {
    Sheddable,
    SheddablePlus,
    Critical,
    CriticalPlus,
}

impl Criticality {
    pub const ALL: [Criticality; 4] = [
        Criticality::Sheddable,
        Criticality::SheddablePlus,
        Criticality::Critical,
        Criticality::CriticalPlus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::Sheddable => "sheddable",
            Criticality::SheddablePlus => "sheddable-plus",
            Criticality::Critical => "critical",
            Criticality::CriticalPlus => "critical-plus",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The tier a value names: the four tier names in any case, with `-` or `_`
    /// (`CRITICAL_PLUS`, as gRPC metadata often spells it). `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<Criticality> {
        let v = value.trim_ascii();
        Criticality::ALL.into_iter().find(|c| {
            let name = c.as_str().as_bytes();
            v.len() == name.len()
                && v.iter()
                    .zip(name)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b) || (*a == b'_' && *b == b'-'))
        })
    }

    /// The tier a policy names (`criticality: critical`).
    pub fn from_name(name: &str) -> Option<Criticality> {
        Criticality::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// A request's tier: from the criticality header, else from the priority header, else the
    /// route's `default`.
    pub fn of(
        headers: &http::HeaderMap,
        criticality_header: &http::HeaderName,
        priority_header: &http::HeaderName,
        default: Criticality,
    ) -> Criticality {
        headers
            .get(criticality_header)
            .and_then(|v| Criticality::parse(v.as_bytes()))
            .or_else(|| {
                headers
                    .get(priority_header)
                    .and_then(Priority::parse)
                    .map(Criticality::from_priority)
            })
            .unwrap_or(default)
    }

    /// The tier's name as a header value, as it travels to the next hop.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// The priority of the tier (the inverse of [`Criticality::from_priority`]), for level
    /// shedding.
    pub fn priority(self) -> Priority {
        match self {
            Criticality::CriticalPlus => Priority::Critical,
            Criticality::Critical => Priority::High,
            Criticality::SheddablePlus => Priority::Normal,
            Criticality::Sheddable => Priority::Low,
        }
    }

    /// The tier of a priority: `critical` → `critical-plus`, `high` → `critical`, `normal` →
    /// `sheddable-plus`, `low` → `sheddable`.
    pub fn from_priority(priority: Priority) -> Criticality {
        match priority {
            Priority::Critical => Criticality::CriticalPlus,
            Priority::High => Criticality::Critical,
            Priority::Normal => Criticality::SheddablePlus,
            Priority::Low => Criticality::Sheddable,
        }
    }
}

impl fmt::Display for Criticality {
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

    #[test]
    fn criticality_reads_the_four_tiers() {
        assert_eq!(
            Criticality::parse(b"critical-plus"),
            Some(Criticality::CriticalPlus)
        );
        assert_eq!(
            Criticality::parse(b" CRITICAL_PLUS "),
            Some(Criticality::CriticalPlus)
        );
        assert_eq!(
            Criticality::parse(b"Sheddable-Plus"),
            Some(Criticality::SheddablePlus)
        );
        assert_eq!(
            Criticality::parse(b"sheddable"),
            Some(Criticality::Sheddable)
        );
        assert_eq!(Criticality::parse(b"critical"), Some(Criticality::Critical));
        assert_eq!(
            Criticality::parse(b"high"),
            None,
            "priorities have their own header"
        );
        assert_eq!(Criticality::parse(b"urgent"), None);
        assert_eq!(Criticality::parse(b"critical_"), None);
        assert!(Criticality::Sheddable < Criticality::CriticalPlus);
        for p in Priority::ALL {
            let c = Criticality::from_priority(p);
            assert_eq!(c.priority(), p);
            assert_eq!(Criticality::parse(c.as_str().as_bytes()), Some(c));
            assert_eq!(Criticality::from_name(c.as_str()), Some(c));
        }
    }

    #[test]
    fn a_requests_tier_comes_from_its_criticality_then_its_priority_then_the_route() {
        let crit = http::HeaderName::from_static("x-bulwark-criticality");
        let prio = http::HeaderName::from_static("x-priority");
        let of = |pairs: &[(&http::HeaderName, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert((*k).clone(), hv(v));
            }
            Criticality::of(&h, &crit, &prio, Criticality::Critical)
        };
        assert_eq!(of(&[]), Criticality::Critical);
        assert_eq!(of(&[(&prio, "low")]), Criticality::Sheddable);
        assert_eq!(of(&[(&prio, "critical")]), Criticality::CriticalPlus);
        assert_eq!(
            of(&[(&crit, "sheddable"), (&prio, "critical")]),
            Criticality::Sheddable
        );
        assert_eq!(
            of(&[(&crit, "bogus"), (&prio, "high")]),
            Criticality::Critical
        );
        assert_eq!(of(&[(&crit, "bogus")]), Criticality::Critical);
    }
}
