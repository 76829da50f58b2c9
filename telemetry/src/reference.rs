//! The metrics reference (`docs/metrics.md`) held against the code: the metrics a registry
//! exports (from its `# TYPE` lines) and the rows of one section of the page must be the same
//! names with the same types; and the metric names a dashboard query uses must be on the page.

use std::collections::BTreeMap;

/// Metric family name → type (`counter`, `gauge`, `histogram`), from a scrape's `# TYPE` lines.
pub fn exported(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// Family name → type from the table under `## {section}` of the reference page. A counter
/// row names its samples (`…_total`); the family is the name without it.
pub fn documented(page: &str, section: &str) -> BTreeMap<String, String> {
    let heading = format!("## {section}");
    page.lines()
        .skip_while(|l| l.trim() != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            let family = match kind {
                "counter" => name.strip_suffix("_total").unwrap_or(name),
                _ => name,
            };
            Some((family.to_string(), kind.to_string()))
        })
        .collect()
}

/// What differs between a binary's metrics — `registered` (family → type, from its
/// [`crate::Registrar`]) and the process metrics — and its section of the page, one line each;
/// empty when they agree.
pub fn differences(
    registered: &BTreeMap<String, String>,
    page: &str,
    section: &str,
) -> Vec<String> {
    let mut process = String::new();
    let _ = crate::encode(&mut process, &[&crate::process_registry()]);
    let mut have = exported(&process);
    have.extend(registered.iter().map(|(k, v)| (k.clone(), v.clone())));
    let documented = documented(page, section);
    let mut out = Vec::new();
    for (name, kind) in &have {
        match documented.get(name) {
            None => out.push(format!(
                "{name} ({kind}) is exported but not in docs/metrics.md, {section}"
            )),
            Some(doc) if doc != kind => {
                out.push(format!("{name} is a {kind}, docs/metrics.md says {doc}"))
            }
            Some(_) => {}
        }
    }
    for name in documented.keys().filter(|n| !have.contains_key(*n)) {
        out.push(format!(
            "{name} is in docs/metrics.md, {section}, but not exported"
        ));
    }
    out
}

/// Fails, listing every difference, unless `registered` and `section` of `page` agree: the
/// test each binary runs against the reference.
pub fn assert_documented(registered: &BTreeMap<String, String>, page: &str, section: &str) {
    let differences = differences(registered, page, section);
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// The sample names a PromQL expression uses: `bulwark_…` and `process_…` identifiers.
pub fn queried(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = ["bulwark_", "process_"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not part of a longer identifier (`my_bulwark_x`).
        let standalone = at == 0
            || !rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if standalone {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Whether sample `name` belongs to a metric of the page (any section): a counter's `_total`,
/// a histogram's `_bucket`, `_sum`, `_count`, or a gauge itself.
pub fn is_documented(page: &str, name: &str) -> bool {
    let families: BTreeMap<String, String> = page
        .lines()
        .filter(|l| l.starts_with("## "))
        .flat_map(|h| documented(page, h.trim_start_matches("## ").trim()))
        .collect();
    let family = |suffix: &str, kind: &str| {
        name.strip_suffix(suffix)
            .is_some_and(|f| families.get(f).is_some_and(|k| k == kind))
    };
    families.get(name).is_some_and(|k| k == "gauge")
        || family("_total", "counter")
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| family(s, "histogram"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# M\n\n## A\n\n| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n| `x_total` | counter | — | x |\n| `h` | histogram | — | h |\n\n## B\n\n| metric | type |\n| --- | --- |\n| `g` | gauge | — | g |\n";

    #[test]
    fn the_page_and_a_scrape_are_compared_by_name_and_type() {
        assert_eq!(
            documented(PAGE, "A").into_iter().collect::<Vec<_>>(),
            [
                ("h".into(), "histogram".into()),
                ("x".into(), "counter".into())
            ]
        );
        let scrape = "# TYPE x counter\nx_total 1\n# TYPE h gauge\n# EOF\n";
        assert_eq!(
            exported(scrape).into_iter().collect::<Vec<_>>(),
            [("h".into(), "gauge".into()), ("x".into(), "counter".into())]
        );
        let registered = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // The process metrics are always there: left out of these sections, they differ too.
        let own = |lines: Vec<String>| -> Vec<String> {
            lines
                .into_iter()
                .filter(|l| !l.starts_with("process_"))
                .collect()
        };
        assert_eq!(
            own(differences(
                &registered(&[("x", "counter"), ("h", "gauge"), ("y", "gauge")]),
                PAGE,
                "A"
            )),
            [
                "h is a gauge, docs/metrics.md says histogram",
                "y (gauge) is exported but not in docs/metrics.md, A",
            ]
        );
        assert!(own(differences(&registered(&[("g", "gauge")]), PAGE, "B")).is_empty());
        assert_eq!(
            own(differences(&registered(&[]), PAGE, "B")),
            ["g is in docs/metrics.md, B, but not exported"]
        );
    }

    #[test]
    fn queries_name_documented_samples() {
        let expr = "sum(rate(bulwark_requests_total{classification=\"failure\"}[5m])) / histogram_quantile(0.99, rate(bulwark_request_duration_seconds_bucket[5m])) + my_bulwark_x";
        assert_eq!(
            queried(expr),
            [
                "bulwark_requests_total",
                "bulwark_request_duration_seconds_bucket"
            ]
        );
        assert!(is_documented(PAGE, "x_total"));
        assert!(is_documented(PAGE, "h_bucket"));
        assert!(is_documented(PAGE, "g"));
        assert!(!is_documented(PAGE, "x"));
        assert!(!is_documented(PAGE, "g_total"));
    }
}
