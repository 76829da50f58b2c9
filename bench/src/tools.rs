//! Reading what wrk and h2load print: throughput, latency percentiles (wrk's `--latency`
//! distribution, or h2load's per-request `--log-file`), and every kind of error they count.

use serde::{Deserialize, Serialize};

use crate::latency::{Latencies, Percentiles};

/// Output that does not look as expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{tool} output: {what}")]
pub struct ParseError {
    pub tool: &'static str,
    pub what: String,
}

fn missing(tool: &'static str, what: &str) -> ParseError {
    ParseError {
        tool,
        what: format!("no {what}"),
    }
}

/// A `wrk --latency` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WrkSummary {
    /// Responses completed.
    pub requests: u64,
    pub requests_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// `Non-2xx or 3xx responses`.
    pub non_2xx: u64,
    /// The sum of `Socket errors: connect, read, write, timeout`.
    pub socket_errors: u64,
}

/// A duration as wrk prints it (`158.00us`, `1.92ms`, `2.01s`), in microseconds.
fn wrk_duration_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(n * factor)
}

pub fn parse_wrk(out: &str) -> Result<WrkSummary, ParseError> {
    const TOOL: &str = "wrk";
    let mut requests = None;
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let (mut non_2xx, mut socket_errors) = (0, 0);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", d] => p50 = wrk_duration_us(d),
            ["99%", d] => p99 = wrk_duration_us(d),
            ["Requests/sec:", n] => rps = n.parse().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().unwrap_or(u64::MAX),
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    Ok(WrkSummary {
        requests: requests.ok_or_else(|| missing(TOOL, "request count"))?,
        requests_per_second: rps.ok_or_else(|| missing(TOOL, "Requests/sec"))?,
        p50_us: p50.ok_or_else(|| missing(TOOL, "50% latency (run with --latency)"))?,
        p99_us: p99.ok_or_else(|| missing(TOOL, "99% latency (run with --latency)"))?,
        non_2xx,
        socket_errors,
    })
}

/// An h2load run's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct H2loadSummary {
    pub requests_per_second: f64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    /// Responses with a status other than 2xx.
    pub non_2xx: u64,
}

/// Reads `requests: 10 total, 10 started, 10 done, 10 succeeded, 0 failed, ...` into pairs.
fn counts<'a>(rest: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    rest.split(',').filter_map(|part| {
        let mut words = part.split_whitespace();
        let n = words.next()?.parse().ok()?;
        Some((words.next()?, n))
    })
}

pub fn parse_h2load(out: &str) -> Result<H2loadSummary, ParseError> {
    const TOOL: &str = "h2load";
    let mut rps = None;
    let mut s = H2loadSummary {
        requests_per_second: 0.0,
        done: 0,
        succeeded: 0,
        failed: 0,
        errored: 0,
        timeout: 0,
        non_2xx: 0,
    };
    let mut saw_requests = false;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 10.00s, 115700.00 req/s, 3.21MB/s
            rps = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix(" req/s"))
                .and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("requests:") {
            saw_requests = true;
            for (what, n) in counts(rest) {
                match what {
                    "done" => s.done = n,
                    "succeeded" => s.succeeded = n,
                    "failed" => s.failed = n,
                    "errored" => s.errored = n,
                    "timeout" => s.timeout = n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            s.non_2xx = counts(rest)
                .filter(|(class, _)| *class != "2xx")
                .map(|(_, n)| n)
                .sum();
        }
    }
    s.requests_per_second = rps.ok_or_else(|| missing(TOOL, "'finished in' line"))?;
    if !saw_requests {
        return Err(missing(TOOL, "'requests:' line"));
    }
    Ok(s)
}

/// Percentiles of h2load's `--log-file` (start µs, status, duration µs per request); failed
/// streams (status -1) are left out.
pub fn h2load_log_percentiles(log: &str) -> Option<Percentiles> {
    let mut latencies = Latencies::default();
    for line in log.lines() {
        let mut cols = line.split('\t');
        let (_start, status, duration) = (cols.next(), cols.next(), cols.next());
        if status.is_none_or(|s| s.trim() == "-1") {
            continue;
        }
        if let Some(us) = duration.and_then(|d| d.trim().parse::<u64>().ok()) {
            latencies.record_us(us);
        }
    }
    latencies.percentiles()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:15101/status/200
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   193.18us   44.89us   2.09ms   78.27%
    Req/Sec    67.77k     2.94k   72.82k    73.27%
  Latency Distribution
     50%  189.00us
     75%  207.00us
     90%  235.00us
     99%    1.31ms
  674412 requests in 10.10s, 60.82MB read
  Non-2xx or 3xx responses: 12
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  66774.17
Transfer/sec:      6.02MB
";

    #[test]
    fn reads_wrk() {
        let s = parse_wrk(WRK).unwrap();
        assert_eq!(s.requests, 674_412);
        assert_eq!(s.requests_per_second, 66_774.17);
        assert_eq!(s.p50_us, 189.0);
        assert_eq!(s.p99_us, 1_310.0);
        assert_eq!((s.non_2xx, s.socket_errors), (12, 3));
    }

    #[test]
    fn wrk_without_errors_counts_none() {
        let clean: String = WRK
            .lines()
            .filter(|l| !l.contains("Non-2xx") && !l.contains("Socket errors"))
            .map(|l| format!("{l}\n"))
            .collect();
        let s = parse_wrk(&clean).unwrap();
        assert_eq!((s.non_2xx, s.socket_errors), (0, 0));
    }

    #[test]
    fn wrk_without_latency_distribution_is_an_error() {
        let err = parse_wrk("  10 requests in 1.00s, 1KB read\nRequests/sec: 10.00\n").unwrap_err();
        assert_eq!(err.what, "no 50% latency (run with --latency)");
    }

    const H2LOAD: &str = "starting benchmark...
finished in 3.00s, 28500.33 req/s, 1.09MB/s
requests: 85501 total, 85565 started, 85501 done, 85500 succeeded, 1 failed, 0 errored, 0 timeout
status codes: 85500 2xx, 0 3xx, 0 4xx, 1 5xx
traffic: 3.27MB (3424412) total, 836.92KB (857004) headers (space savings 90.26%)
";

    #[test]
    fn reads_h2load() {
        let s = parse_h2load(H2LOAD).unwrap();
        assert_eq!(s.requests_per_second, 28_500.33);
        assert_eq!((s.done, s.succeeded, s.failed), (85_501, 85_500, 1));
        assert_eq!((s.errored, s.timeout, s.non_2xx), (0, 0, 1));
    }

    #[test]
    fn h2load_log_leaves_failed_streams_out() {
        let log =
            "1700000000000000\t200\t100\n1700000000000100\t-1\t5\n1700000000000200\t200\t300\n";
        let p = h2load_log_percentiles(log).unwrap();
        assert_eq!((p.count, p.p50_us, p.max_us), (2, 100.0, 300.0));
    }
}
