//! Reading the Prometheus text exposition of the sidecar and the control plane: samples with their labels, and a lookup
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

/// Asserts what every Bulwark binary exports about itself: `bulwark_build_info` naming the
/// version and commit these tests were built from, and the process's own `process_*` metrics
/// with values a live process has.
pub fn assert_build_and_process(text: &str) {
    let build = [
        ("version", bulwark_telemetry::VERSION),
        ("revision", bulwark_telemetry::REVISION),
    ];
    assert_eq!(
        value(text, "bulwark_build_info", &build),
        Some(1.0),
        "{text}"
    );
    let process = |name| value(text, name, &[]).unwrap_or_else(|| panic!("{name}:\n{text}"));
    assert!(process("process_resident_memory_bytes") > 1e6, "{text}");
    assert!(process("process_open_fds") >= 3.0, "{text}");
    assert!(
        process("process_max_fds") >= process("process_open_fds"),
        "{text}"
    );
    assert!(process("process_threads") >= 1.0, "{text}");
    assert!(process("process_cpu_seconds_total") >= 0.0, "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let started = process("process_start_time_seconds");
    assert!(
        (now - 600.0..=now + 1.0).contains(&started),
        "started at {started}, now {now}"
    );
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
