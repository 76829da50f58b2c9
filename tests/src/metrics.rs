//! Reading the sidecar's Prometheus text exposition: samples with their labels, and a lookup
//! by name and a subset of labels (so tests do not depend on label order).

use std::collections::BTreeMap;

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample in `text`; comments and lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// The value of the first sample named `name` that carries all of `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse(text)
        .into_iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
        .map(|s| s.value)
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let end;
        loop {
            // label name
            let mut key = String::new();
            let mut c = chars.next()?;
            while c.1 == ' ' || c.1 == ',' {
                c = chars.next()?;
            }
            if c.1 == '}' {
                end = c.0 + 1;
                break;
            }
            while c.1 != '=' {
                key.push(c.1);
                c = chars.next()?;
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, ch) = chars.next()?;
                match ch {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        &body[end..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_samples_by_label_subset() {
        let text = "# HELP bulwark_requests Requests.\n\
            # TYPE bulwark_requests counter\n\
            bulwark_requests_total{direction=\"outbound\",upstream=\"echo\",protocol=\"http1\",status_class=\"2xx\"} 3\n\
            bulwark_requests_total{direction=\"outbound\",upstream=\"echo\",protocol=\"http1\",status_class=\"5xx\"} 1\n\
            bulwark_request_duration_seconds_bucket{upstream=\"a\\\"b\",le=\"+Inf\"} 4\n\
            bulwark_up 1\n\
            # EOF\n";
        assert_eq!(
            value(
                text,
                "bulwark_requests_total",
                &[("status_class", "2xx"), ("upstream", "echo")]
            ),
            Some(3.0)
        );
        assert_eq!(
            value(text, "bulwark_requests_total", &[("status_class", "5xx")]),
            Some(1.0)
        );
        assert_eq!(
            value(
                text,
                "bulwark_request_duration_seconds_bucket",
                &[("upstream", "a\"b"), ("le", "+Inf")]
            ),
            Some(4.0)
        );
        assert_eq!(value(text, "bulwark_up", &[]), Some(1.0));
        assert_eq!(
            value(text, "bulwark_requests_total", &[("upstream", "other")]),
            None
        );
    }
}
