//! Kubernetes resource quantities (`100m`, `0.5`, `128Mi`, `1e3`): checked before they go into
//! the sidecar's `resources`, and compared so that a request above its limit is refused here
//! rather than by the API server.

/// The quantity's value in base units (cores, bytes), or `None` when `text` is not a
/// non-negative Kubernetes quantity.
pub(crate) fn parse(text: &str) -> Option<f64> {
    let text = text.strip_prefix('+').unwrap_or(text);
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if !is_number(number) {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let digits = exponent.strip_prefix(['e', 'E'])?;
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(digits.parse().ok()?)
        }
    };
    Some(number * scale)
}

/// `digits`, `digits.digits`, `digits.` or `.digits`.
fn is_number(text: &str) -> bool {
    let mut parts = text.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next();
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    match fraction {
        None => !whole.is_empty() && digits(whole),
        Some(fraction) => {
            (!whole.is_empty() || !fraction.is_empty()) && digits(whole) && digits(fraction)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn accepts_what_kubernetes_accepts() {
        assert_eq!(parse("100m"), Some(0.1));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("0.5"), Some(0.5));
        assert_eq!(parse(".5"), Some(0.5));
        assert_eq!(parse("128Mi"), Some(128.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1G"), Some(1e9));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("+1Ki"), Some(1024.0));
    }

    #[test]
    fn rejects_the_rest() {
        for bad in [
            "", "m", "-1", "1.2.3", "1x", "1 Mi", "Mi1", "1e", "1e+", "1mi", ".",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
