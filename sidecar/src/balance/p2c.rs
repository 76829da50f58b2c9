//! Load balancing: power of two random choices on in-flight requests (Mitzenmacher), which
//! avoids the herding of least-loaded and needs no shared state beyond per-endpoint counters.
//! The one place the sidecar chooses between endpoints.

use std::sync::Arc;

use crate::upstream::Endpoint;

/// Among the endpoints `eligible` accepts, the less loaded of two distinct random ones (the
/// only one when one is eligible; `None` when none is). Allocates nothing.
pub fn p2c(
    endpoints: &[Arc<Endpoint>],
    eligible: impl Fn(&Endpoint) -> bool,
) -> Option<&Arc<Endpoint>> {
    let n = endpoints.iter().filter(|e| eligible(e)).count();
    let nth = |k: usize| endpoints.iter().filter(|e| eligible(e)).nth(k);
    match n {
        0 => None,
        1 => nth(0),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            match (nth(a), nth(b)) {
                (Some(x), Some(y)) => Some(if y.in_flight() < x.in_flight() { y } else { x }),
                (x, y) => x.or(y),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        (1..=n)
            .map(|p| Endpoint::new(format!("127.0.0.1:{p}").parse().unwrap()))
            .collect()
    }

    #[test]
    fn picks_the_only_endpoint_or_none() {
        assert!(p2c(&[], |_| true).is_none());
        let one = endpoints(1);
        assert_eq!(p2c(&one, |_| true).unwrap().addr, one[0].addr);
        assert!(p2c(&one, |_| false).is_none());
    }

    #[test]
    fn spreads_over_idle_endpoints() {
        let eps = endpoints(4);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(p2c(&eps, |_| true).unwrap().addr);
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn only_eligible_endpoints_are_chosen() {
        let eps = endpoints(4);
        let banned = eps[1].addr;
        for _ in 0..200 {
            let chosen = p2c(&eps, |e| e.addr != banned).unwrap();
            assert_ne!(chosen.addr, banned);
        }
        let only = eps[3].addr;
        assert_eq!(p2c(&eps, |e| e.addr == only).unwrap().addr, only);
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let eps = endpoints(2);
        let _busy = eps[0].lease();
        for _ in 0..50 {
            assert_eq!(p2c(&eps, |_| true).unwrap().addr, eps[1].addr);
        }
    }
}
