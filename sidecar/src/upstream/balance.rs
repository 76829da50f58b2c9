//! Load balancing: power of two random choices on in-flight requests (Mitzenmacher), which
//! avoids the herding of least-loaded and needs no shared state beyond per-endpoint counters.

use std::sync::Arc;

use super::endpoint::Endpoint;

/// Picks the less loaded of two distinct random endpoints.
pub fn p2c(endpoints: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
    match endpoints.len() {
        0 => None,
        1 => Some(endpoints[0].clone()),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            Some(if eb.in_flight() < ea.in_flight() {
                eb.clone()
            } else {
                ea.clone()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_only_endpoint_or_none() {
        assert!(p2c(&[]).is_none());
        let one = vec![Endpoint::new("127.0.0.1:1".parse().unwrap())];
        assert_eq!(p2c(&one).unwrap().addr, one[0].addr);
    }

    #[test]
    fn spreads_over_idle_endpoints() {
        let eps: Vec<_> = (1..=4)
            .map(|p| Endpoint::new(format!("127.0.0.1:{p}").parse().unwrap()))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(p2c(&eps).unwrap().addr);
        }
        assert_eq!(seen.len(), 4);
    }
}
