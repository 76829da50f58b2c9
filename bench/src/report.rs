//! The run's table: reads the raw outputs `bench/run` leaves in a run directory, takes the median
//! of each measurement over the rounds per target, and writes Markdown with Bulwark/Envoy ratios,
//! followed by every problem found (errors where there should be none, a rate not reached, an
//! output missing).
//!
//! Layout of a run directory: `meta.json` (how the run was made) and `raw/`, holding
//! `r{round}.{target}.{measurement}.{kind}` files (`target` is `direct`, `bulwark` or `envoy`)
//! and `{target}.rss`:
//!
//! | file | written by | read for |
//! | --- | --- | --- |
//! | `wrk.txt` | wrk `--latency` | HTTP/1.1 closed loop |
//! | `h2load.txt`, `h2load.lat.json` | h2load; `bulwark-bench-report h2load-log` | gRPC closed loop |
//! | `fixed-http.json`, `fixed-grpc.json` | `bulwark-load http` / `grpc` | fixed-rate latency |
//! | `download.json`, `upload.json`, `bidi.json` | `bulwark-load download` / `upload` / `bidi` | streaming |
//! | `fault-http.json`, `fault-grpc.json` | `bulwark-load http` / `grpc` | success ratio |
//! | `fault-*.upstream` | the failing upstream's exit line | amplification |
//! | `fault-*.proxy` | the proxy's own upstream request count (`{"upstream_requests": N}`) | cross-check |
//! | `*.cpu` | `/proc/PID/stat` utime+stime delta (`{"ticks": N, "clk_tck": 100}`) | CPU per request |
//! | `{target}.rss` | `/proc/PID/status` (`{"idle_kib": N, "peak_kib": N}`) | memory |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::bidi::BidiReport;
use crate::bulk::BulkReport;
use crate::latency::Percentiles;
use crate::open_loop::OpenLoopReport;
use crate::tools;

/// The three ways a call is made, in table order.
pub const TARGETS: [&str; 3] = ["direct", "bulwark", "envoy"];

/// Every number the table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    HttpRps,
    HttpP50,
    HttpP99,
    GrpcRps,
    GrpcP50,
    GrpcP99,
    FixedHttpP50,
    FixedHttpP99,
    FixedHttpP999,
    FixedGrpcP50,
    FixedGrpcP99,
    FixedGrpcP999,
    DownloadMbs,
    UploadMbs,
    BidiMps,
    FaultHttpSuccess,
    FaultHttpAmplification,
    FaultHttpAmplificationProxy,
    FaultGrpcSuccess,
    FaultGrpcAmplification,
    FaultGrpcAmplificationProxy,
    CpuHttp,
    CpuGrpc,
    CpuFixedHttp,
    CpuFixedGrpc,
    IdleRss,
    PeakRss,
}

/// How the run was made, as `bench/run` wrote it to `meta.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Meta {
    pub date: String,
    pub rounds: u32,
    pub seconds: f64,
    pub quick: bool,
    pub machine: String,
    pub envoy: String,
    pub bulwark: String,
    pub load_before: String,
    pub load_after: String,
    pub fixed_rate: f64,
    pub fault_rate: f64,
    pub fail_percent: u32,
    pub bulk_bytes: u64,
    pub bulk_repeat: u32,
    pub wrk_connections: u32,
    pub h2load_connections: u32,
    pub h2load_streams: u32,
    pub fixed_http_connections: u32,
    pub fixed_grpc_connections: u32,
    pub bidi_window: u32,
}

impl Default for Meta {
    fn default() -> Meta {
        Meta {
            date: String::new(),
            rounds: 0,
            seconds: 0.0,
            quick: false,
            machine: String::new(),
            envoy: String::new(),
            bulwark: String::new(),
            load_before: String::new(),
            load_after: String::new(),
            fixed_rate: 2_000.0,
            fault_rate: 500.0,
            fail_percent: 10,
            bulk_bytes: 100_000_000,
            bulk_repeat: 1,
            wrk_connections: 16,
            h2load_connections: 4,
            h2load_streams: 16,
            fixed_http_connections: 16,
            fixed_grpc_connections: 4,
            bidi_window: 64,
        }
    }
}

/// A run read from its directory.
#[derive(Debug, Default)]
pub struct Run {
    pub meta: Meta,
    /// Values of each metric per target, one per round (or one per run for memory).
    pub values: BTreeMap<(Metric, &'static str), Vec<f64>>,
    /// The same values by round (0: not read in a round), to compare targets within a round.
    pub by_round: BTreeMap<(Metric, &'static str, u32), f64>,
    /// The round being read.
    round: u32,
    /// Errors where there should be none, outputs missing or unreadable.
    pub problems: Vec<String>,
    /// Things worth knowing that are not errors.
    pub notes: Vec<String>,
    /// Open-loop runs whose requests left late (the load tool's core was busy).
    pub late_sends: Vec<String>,
}

impl Run {
    fn push(&mut self, metric: Metric, target: &'static str, value: f64) {
        if value.is_finite() {
            self.values.entry((metric, target)).or_default().push(value);
            self.by_round.insert((metric, target, self.round), value);
        }
    }

    /// Bulwark ÷ Envoy within each round where both have a value, in round order. Within a
    /// round the targets take each measurement one right after the other, so a ratio within a
    /// round is not moved by the host growing busier or quieter between rounds (minutes apart),
    /// as a ratio of medians taken over all rounds can be.
    pub fn round_ratios(&self, metric: Metric) -> Vec<(u32, f64)> {
        (1..=self.meta.rounds)
            .filter_map(|round| {
                let b = self.by_round.get(&(metric, "bulwark", round))?;
                let e = self.by_round.get(&(metric, "envoy", round))?;
                (*e > 0.0).then(|| (round, b / e))
            })
            .collect()
    }

    /// The median over the rounds.
    pub fn median(&self, metric: Metric, target: &str) -> Option<f64> {
        let values = self
            .values
            .iter()
            .find(|((m, t), _)| *m == metric && *t == target)
            .map(|(_, v)| v)?;
        median(values)
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[derive(Debug, Deserialize)]
struct Cpu {
    ticks: u64,
    clk_tck: u64,
}

#[derive(Debug, Deserialize)]
struct Rss {
    idle_kib: u64,
    peak_kib: u64,
}

#[derive(Debug, Deserialize)]
struct ProxyCount {
    upstream_requests: u64,
}

/// Reads one round of one target's files, checking each for errors.
struct Reader<'a> {
    raw: &'a Path,
    round: u32,
    target: &'static str,
    run: &'a mut Run,
}

impl Reader<'_> {
    fn name(&self, file: &str) -> String {
        format!("r{}.{}.{file}", self.round, self.target)
    }

    fn text(&mut self, file: &str) -> Option<String> {
        let name = self.name(file);
        match std::fs::read_to_string(self.raw.join(&name)) {
            Ok(text) => Some(text),
            Err(e) => {
                self.run.problems.push(format!("{name}: missing ({e})"));
                None
            }
        }
    }

    fn json<T: for<'de> Deserialize<'de>>(&mut self, file: &str) -> Option<T> {
        let text = self.text(file)?;
        match serde_json::from_str(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                let name = self.name(file);
                self.run.problems.push(format!("{name}: unreadable ({e})"));
                None
            }
        }
    }

    fn problem(&mut self, file: &str, what: String) {
        let name = self.name(file);
        self.run.problems.push(format!("{name}: {what}"));
    }

    /// CPU µs per request of the proxy during one measurement.
    fn cpu(&mut self, file: &str, metric: Metric, requests: Option<u64>) {
        if self.target == "direct" {
            return;
        }
        let (Some(cpu), Some(requests)) = (self.json::<Cpu>(file), requests) else {
            return;
        };
        if requests > 0 && cpu.clk_tck > 0 {
            let us = cpu.ticks as f64 * 1e6 / cpu.clk_tck as f64 / requests as f64;
            self.run.push(metric, self.target, us);
        }
    }

    fn wrk(&mut self) {
        let Some(text) = self.text("wrk.txt") else {
            return;
        };
        match tools::parse_wrk(&text) {
            Ok(s) => {
                if s.non_2xx > 0 || s.socket_errors > 0 {
                    self.problem(
                        "wrk.txt",
                        format!(
                            "{} non-2xx responses, {} socket errors",
                            s.non_2xx, s.socket_errors
                        ),
                    );
                }
                self.run
                    .push(Metric::HttpRps, self.target, s.requests_per_second);
                self.run.push(Metric::HttpP50, self.target, s.p50_us);
                self.run.push(Metric::HttpP99, self.target, s.p99_us);
                self.cpu("wrk.cpu", Metric::CpuHttp, Some(s.requests));
            }
            Err(e) => self.problem("wrk.txt", e.to_string()),
        }
    }

    fn h2load(&mut self) {
        let Some(text) = self.text("h2load.txt") else {
            return;
        };
        match tools::parse_h2load(&text) {
            Ok(s) => {
                if s.failed + s.errored + s.timeout + s.non_2xx > 0 {
                    self.problem(
                        "h2load.txt",
                        format!(
                            "{} failed, {} errored, {} timed out, {} non-2xx",
                            s.failed, s.errored, s.timeout, s.non_2xx
                        ),
                    );
                }
                self.run
                    .push(Metric::GrpcRps, self.target, s.requests_per_second);
                self.cpu("h2load.cpu", Metric::CpuGrpc, Some(s.done));
            }
            Err(e) => self.problem("h2load.txt", e.to_string()),
        }
        if let Some(p) = self.json::<Percentiles>("h2load.lat.json") {
            self.run.push(Metric::GrpcP50, self.target, p.p50_us);
            self.run.push(Metric::GrpcP99, self.target, p.p99_us);
        }
    }

    /// An open-loop run that should see no failure at all.
    fn fixed(&mut self, name: &str, metrics: [Metric; 3], cpu: Metric) {
        let file = format!("{name}.json");
        let Some(r) = self.json::<OpenLoopReport>(&file) else {
            return;
        };
        if r.failed + r.errors + r.unfinished > 0 {
            let why = r.first_failure.clone().or(r.first_error.clone());
            self.problem(
                &file,
                format!(
                    "{} failed, {} errors, {} unfinished of {} (first: {})",
                    r.failed,
                    r.errors,
                    r.unfinished,
                    r.sent,
                    why.unwrap_or_default()
                ),
            );
        }
        self.check_rate(&file, &r);
        if let Some(p) = r.latency {
            self.run.push(metrics[0], self.target, p.p50_us);
            self.run.push(metrics[1], self.target, p.p99_us);
            self.run.push(metrics[2], self.target, p.p999_us);
        }
        self.cpu(&format!("{name}.cpu"), cpu, Some(r.ok + r.failed));
    }

    fn check_rate(&mut self, file: &str, r: &OpenLoopReport) {
        if r.achieved_rps < 0.95 * r.rate {
            self.problem(
                file,
                format!(
                    "achieved {:.0} req/s of the {:.0} asked for",
                    r.achieved_rps, r.rate
                ),
            );
        }
        if let Some(lag) = r.dispatch_lag
            && lag.p99_us > 200.0
        {
            let name = self.name(file);
            let name = name.trim_end_matches(".json");
            self.run
                .late_sends
                .push(format!("{name} ({:.0} µs)", lag.p99_us));
        }
    }

    /// A run against the failing upstream: failures expected, transport errors not.
    fn fault(&mut self, name: &str, success: Metric, amp: Metric, amp_proxy: Metric) {
        let file = format!("{name}.json");
        let Some(r) = self.json::<OpenLoopReport>(&file) else {
            return;
        };
        if r.errors + r.unfinished > 0 {
            self.problem(
                &file,
                format!(
                    "{} errors, {} unfinished of {} (first: {})",
                    r.errors,
                    r.unfinished,
                    r.sent,
                    r.first_error.clone().unwrap_or_default()
                ),
            );
        }
        // No rate check: retried requests wait out a backoff, which stretches a short run.
        self.run.push(success, self.target, 100.0 * r.success_ratio);
        let upstream_file = format!("{name}.upstream");
        if let Some(text) = self.text(&upstream_file) {
            let kind = if name.ends_with("grpc") {
                "grpc"
            } else {
                "http"
            };
            match upstream_served(&text, kind) {
                Some(seen) if r.sent > 0 => {
                    self.run.push(amp, self.target, seen as f64 / r.sent as f64);
                }
                _ => self.problem(&upstream_file, format!("no request count in {text:?}")),
            }
        }
        if self.target != "direct"
            && let Some(p) = self.json::<ProxyCount>(&format!("{name}.proxy"))
            && r.sent > 0
        {
            self.run.push(
                amp_proxy,
                self.target,
                p.upstream_requests as f64 / r.sent as f64,
            );
        }
    }

    fn bulk(&mut self, file: &str, metric: Metric) {
        let Some(r) = self.json::<BulkReport>(file) else {
            return;
        };
        if let Some(e) = &r.error {
            self.problem(file, format!("{} (HTTP {})", e, r.status));
        } else if r.status != 200 {
            self.problem(file, format!("HTTP {}", r.status));
        } else {
            self.run.push(metric, self.target, r.mb_per_second);
        }
    }

    fn bidi(&mut self) {
        let Some(r) = self.json::<BidiReport>("bidi.json") else {
            return;
        };
        if let Some(e) = &r.error {
            self.problem("bidi.json", format!("{e} after {} echoes", r.received));
        } else if r.received == 0 || r.received != r.sent {
            self.problem(
                "bidi.json",
                format!("{} sent, {} echoed", r.sent, r.received),
            );
        } else {
            self.run
                .push(Metric::BidiMps, self.target, r.messages_per_second);
        }
    }
}

/// The count in the upstream's exit line, `stopping: http served N requests, grpc served M calls`.
pub fn upstream_served(line: &str, kind: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[0] == kind && w[1] == "served")
        .and_then(|w| w[2].parse().ok())
}

/// Reads a run directory.
pub fn load(dir: &Path) -> anyhow::Result<Run> {
    let meta_path = dir.join("meta.json");
    let meta: Meta = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .map_err(|e| anyhow::anyhow!("read {}: {e}", meta_path.display()))?,
    )?;
    let raw = dir.join("raw");
    let mut run = Run {
        meta,
        ..Run::default()
    };
    for round in 1..=run.meta.rounds {
        run.round = round;
        for target in TARGETS {
            let mut r = Reader {
                raw: &raw,
                round,
                target,
                run: &mut run,
            };
            r.wrk();
            r.h2load();
            r.fixed(
                "fixed-http",
                [
                    Metric::FixedHttpP50,
                    Metric::FixedHttpP99,
                    Metric::FixedHttpP999,
                ],
                Metric::CpuFixedHttp,
            );
            r.fixed(
                "fixed-grpc",
                [
                    Metric::FixedGrpcP50,
                    Metric::FixedGrpcP99,
                    Metric::FixedGrpcP999,
                ],
                Metric::CpuFixedGrpc,
            );
            r.bulk("download.json", Metric::DownloadMbs);
            r.bulk("upload.json", Metric::UploadMbs);
            r.bidi();
            r.fault(
                "fault-http",
                Metric::FaultHttpSuccess,
                Metric::FaultHttpAmplification,
                Metric::FaultHttpAmplificationProxy,
            );
            r.fault(
                "fault-grpc",
                Metric::FaultGrpcSuccess,
                Metric::FaultGrpcAmplification,
                Metric::FaultGrpcAmplificationProxy,
            );
        }
    }
    run.round = 0;
    for log in ["bulwark.log", "envoy.log"] {
        let lines = std::fs::read_to_string(dir.join("logs").join(log)).unwrap_or_default();
        // Envoy's own shutdown line is no news (it is there when the table is made again later).
        let lines: Vec<&str> = lines
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("caught ENVOY_SIGTERM"))
            .collect();
        if let Some(first) = lines.first() {
            run.notes.push(format!(
                "logs/{log}: {} line(s) at warning level or above; the first: {}",
                lines.len(),
                first.trim()
            ));
        }
    }
    for target in ["bulwark", "envoy"] {
        let path = raw.join(format!("{target}.rss"));
        match std::fs::read_to_string(&path)
            .map_err(anyhow::Error::from)
            .and_then(|t| Ok(serde_json::from_str::<Rss>(&t)?))
        {
            Ok(rss) => {
                run.push(Metric::IdleRss, target, rss.idle_kib as f64 / 1024.0);
                run.push(Metric::PeakRss, target, rss.peak_kib as f64 / 1024.0);
            }
            Err(e) => run
                .problems
                .push(format!("{target}.rss: missing or unreadable ({e})")),
        }
    }
    Ok(run)
}

/// How a row's numbers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Whole numbers with thousands separators.
    Count,
    /// One decimal.
    Tenths,
    /// Two decimals.
    Hundredths,
    /// A percentage with two decimals.
    Percent,
}

#[derive(Debug, Clone)]
struct Row {
    label: String,
    metric: Metric,
    format: Format,
    /// Latency at a fixed rate: the proxies' cells show what they add over direct, and the
    /// ratio compares the added latencies.
    added: bool,
}

fn row(label: impl Into<String>, metric: Metric, format: Format) -> Row {
    Row {
        label: label.into(),
        metric,
        format,
        added: false,
    }
}

fn added(label: &str, metric: Metric) -> Row {
    Row {
        label: label.to_string(),
        metric,
        format: Format::Count,
        added: true,
    }
}

fn sections(m: &Meta) -> Vec<(String, Vec<Row>)> {
    use Format::*;
    use Metric::*;
    vec![
        (
            format!(
                "HTTP/1.1 closed loop (wrk, 1 thread × {} connections)",
                m.wrk_connections
            ),
            vec![
                row("requests/s", HttpRps, Count),
                row("p50 latency, µs", HttpP50, Count),
                row("p99 latency, µs", HttpP99, Count),
            ],
        ),
        (
            format!(
                "gRPC unary closed loop (h2load, {} connections × {} streams)",
                m.h2load_connections, m.h2load_streams
            ),
            vec![
                row("requests/s", GrpcRps, Count),
                row("p50 latency, µs", GrpcP50, Count),
                row("p99 latency, µs", GrpcP99, Count),
            ],
        ),
        (
            format!(
                "HTTP/1.1 at {} req/s, open loop ({} connections): latency µs (added over direct)",
                thousands(m.fixed_rate),
                m.fixed_http_connections
            ),
            vec![
                added("p50", FixedHttpP50),
                added("p99", FixedHttpP99),
                added("p99.9", FixedHttpP999),
            ],
        ),
        (
            format!(
                "gRPC unary at {} req/s, open loop ({} connections): latency µs (added over direct)",
                thousands(m.fixed_rate),
                m.fixed_grpc_connections
            ),
            vec![
                added("p50", FixedGrpcP50),
                added("p99", FixedGrpcP99),
                added("p99.9", FixedGrpcP999),
            ],
        ),
        (
            "Streaming".to_string(),
            vec![
                row(
                    format!(
                        "{} MB download (HTTP/1.1 GET, median of {}), MB/s",
                        m.bulk_bytes / 1_000_000,
                        m.bulk_repeat
                    ),
                    DownloadMbs,
                    Count,
                ),
                row(
                    format!(
                        "{} MB upload (HTTP/1.1 POST, median of {}), MB/s",
                        m.bulk_bytes / 1_000_000,
                        m.bulk_repeat
                    ),
                    UploadMbs,
                    Count,
                ),
                row(
                    format!("gRPC bidi stream ({} in flight), messages/s", m.bidi_window),
                    BidiMps,
                    Count,
                ),
            ],
        ),
        (
            format!(
                "Under faults: the upstream fails {}% of calls, {} req/s open loop",
                m.fail_percent,
                thousands(m.fault_rate)
            ),
            vec![
                row(
                    "HTTP/1.1 success seen by the client, %",
                    FaultHttpSuccess,
                    Percent,
                ),
                row(
                    "HTTP/1.1 upstream amplification (upstream's count)",
                    FaultHttpAmplification,
                    Hundredths,
                ),
                row(
                    "HTTP/1.1 upstream amplification (proxy's count)",
                    FaultHttpAmplificationProxy,
                    Hundredths,
                ),
                row(
                    "gRPC success seen by the client, %",
                    FaultGrpcSuccess,
                    Percent,
                ),
                row(
                    "gRPC upstream amplification (upstream's count)",
                    FaultGrpcAmplification,
                    Hundredths,
                ),
                row(
                    "gRPC upstream amplification (proxy's count)",
                    FaultGrpcAmplificationProxy,
                    Hundredths,
                ),
            ],
        ),
        (
            "Proxy resources (one core)".to_string(),
            vec![
                row("CPU µs per request, HTTP/1.1 closed loop", CpuHttp, Tenths),
                row("CPU µs per request, gRPC closed loop", CpuGrpc, Tenths),
                row(
                    format!(
                        "CPU µs per request, HTTP/1.1 at {} req/s",
                        thousands(m.fixed_rate)
                    ),
                    CpuFixedHttp,
                    Tenths,
                ),
                row(
                    format!(
                        "CPU µs per request, gRPC at {} req/s",
                        thousands(m.fixed_rate)
                    ),
                    CpuFixedGrpc,
                    Tenths,
                ),
                row("RSS idle, MiB", IdleRss, Tenths),
                row("RSS peak (whole run), MiB", PeakRss, Tenths),
            ],
        ),
    ]
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

fn format(v: f64, f: Format) -> String {
    match f {
        Format::Count => thousands(v),
        Format::Tenths => format!("{v:.1}"),
        Format::Hundredths => format!("{v:.2}"),
        Format::Percent => format!("{v:.2}%"),
    }
}

fn signed(v: f64) -> String {
    if v < 0.0 {
        format!("−{}", thousands(-v))
    } else {
        format!("+{}", thousands(v))
    }
}

fn ratio(bulwark: Option<f64>, envoy: Option<f64>) -> String {
    match (bulwark, envoy) {
        (Some(b), Some(e)) if e != 0.0 => format!("{:.2}", b / e),
        _ => "—".to_string(),
    }
}

/// The ratio of two added latencies, when both proxies added some: one at or below direct is
/// within the noise, and a ratio with it would mean nothing.
fn added_ratio(bulwark: Option<f64>, envoy: Option<f64>) -> String {
    match (bulwark, envoy) {
        (Some(b), Some(e)) if b > 0.0 && e > 0.0 => ratio(Some(b), Some(e)),
        _ => "—".to_string(),
    }
}

/// The Markdown table, its legend and the problems.
pub fn render(run: &Run) -> String {
    let m = &run.meta;
    let mut out = String::new();
    let _ = writeln!(out, "## Bulwark and Envoy side by side");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}{} round(s) × {} s per measurement, targets alternating; medians over the rounds.  ",
        if m.quick { "Quick run: " } else { "" },
        m.rounds,
        m.seconds
    );
    let _ = writeln!(
        out,
        "{}; Bulwark {}; Envoy {}.  ",
        or_unknown(&m.date),
        or_unknown(&m.bulwark),
        or_unknown(&m.envoy)
    );
    let _ = writeln!(
        out,
        "Machine: {}; load average before {}, after {}.",
        or_unknown(&m.machine),
        or_unknown(&m.load_before),
        or_unknown(&m.load_after)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| measurement | direct | Bulwark | Envoy | Bulwark / Envoy |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (title, rows) in sections(m) {
        let _ = writeln!(out, "| **{title}** | | | | |");
        for r in rows {
            let [d, b, e] = TARGETS.map(|t| run.median(r.metric, t));
            let cell = |v: Option<f64>| v.map_or("—".to_string(), |v| format(v, r.format));
            let (bc, ec, rc) = if r.added {
                let add = |v: Option<f64>| Some(v? - d?);
                let show = |v: Option<f64>| match (v, add(v)) {
                    (Some(v), Some(a)) => format!("{} ({})", thousands(v), signed(a)),
                    (v, _) => cell(v),
                };
                (show(b), show(e), added_ratio(add(b), add(e)))
            } else {
                (cell(b), cell(e), ratio(b, e))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.label,
                cell(d),
                bc,
                ec,
                rc
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Bulwark / Envoy: above 1 Bulwark is higher — better for requests/s, MB/s, messages/s and \
         success; worse for latency, CPU, memory and amplification. Fixed-rate rows compare the \
         latency each proxy adds over direct."
    );
    let _ = writeln!(out);
    render_rounds(run, &mut out);
    if run.problems.is_empty() {
        let _ = writeln!(
            out,
            "Problems: none — no errors outside the fault runs, every fixed rate reached, every \
             output present."
        );
    } else {
        let _ = writeln!(out, "Problems:");
        let _ = writeln!(out);
        for p in &run.problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    let mut notes = run.notes.clone();
    if !run.late_sends.is_empty() {
        notes.push(format!(
            "The load tool sent late (dispatch lag p99 above 200 µs: its core was busy), which \
             counts in the latency of: {}.",
            run.late_sends.join(", ")
        ));
    }
    if !notes.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "Notes:");
        let _ = writeln!(out);
        for n in &notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

/// The closed-loop ratios round by round, with their median: the targets' ratios taken within
/// each round instead of between medians taken over all of them.
fn render_rounds(run: &Run, out: &mut String) {
    let rows = [
        ("HTTP/1.1 requests/s", Metric::HttpRps),
        ("gRPC requests/s", Metric::GrpcRps),
        ("CPU µs per request, HTTP/1.1", Metric::CpuHttp),
        ("CPU µs per request, gRPC", Metric::CpuGrpc),
    ];
    let rounds = run.meta.rounds;
    if rounds < 2 || rows.iter().all(|(_, m)| run.round_ratios(*m).is_empty()) {
        return;
    }
    let _ = writeln!(
        out,
        "Closed loop, Bulwark / Envoy within each round (one right after the other):"
    );
    let _ = writeln!(out);
    let heads: Vec<String> = (1..=rounds).map(|r| format!("round {r}")).collect();
    let _ = writeln!(out, "| ratio | {} | median |", heads.join(" | "));
    let _ = writeln!(out, "|---|{}---:|", "---:|".repeat(heads.len()));
    for (label, metric) in rows {
        let ratios = run.round_ratios(metric);
        let cells: Vec<String> = (1..=rounds)
            .map(|r| {
                ratios
                    .iter()
                    .find(|(round, _)| *round == r)
                    .map_or("—".to_string(), |(_, v)| format!("{v:.2}"))
            })
            .collect();
        let values: Vec<f64> = ratios.iter().map(|(_, v)| *v).collect();
        let med = median(&values).map_or("—".to_string(), |v| format!("{v:.2}"));
        let _ = writeln!(out, "| {label} | {} | {med} |", cells.join(" | "));
    }
    let _ = writeln!(out);
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(75_700.4), "75,700");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(-1_234.0), "-1,234");
    }

    #[test]
    fn reads_the_upstream_exit_line() {
        let line = "stopping: http served 5512 requests, grpc served 0 calls\n";
        assert_eq!(upstream_served(line, "http"), Some(5512));
        assert_eq!(upstream_served(line, "grpc"), Some(0));
        assert_eq!(upstream_served("listening", "http"), None);
    }

    fn run_with(values: &[(Metric, &'static str, f64)]) -> Run {
        let mut run = Run::default();
        for &(m, t, v) in values {
            run.push(m, t, v);
        }
        run
    }

    #[test]
    fn fixed_rate_rows_show_and_compare_added_latency() {
        let run = run_with(&[
            (Metric::FixedHttpP50, "direct", 124.0),
            (Metric::FixedHttpP50, "bulwark", 184.0),
            (Metric::FixedHttpP50, "envoy", 273.0),
        ]);
        let table = render(&run);
        assert!(
            table.contains("| p50 | 124 | 184 (+60) | 273 (+149) | 0.40 |"),
            "{table}"
        );
    }

    #[test]
    fn no_ratio_of_an_added_latency_within_the_noise() {
        let run = run_with(&[
            (Metric::FixedHttpP999, "direct", 3_772.0),
            (Metric::FixedHttpP999, "bulwark", 3_584.0),
            (Metric::FixedHttpP999, "envoy", 37_532.0),
        ]);
        let table = render(&run);
        assert!(
            table.contains("| p99.9 | 3,772 | 3,584 (−188) | 37,532 (+33,760) | — |"),
            "{table}"
        );
    }

    #[test]
    fn plain_rows_compare_values_and_show_gaps() {
        let run = run_with(&[
            (Metric::HttpRps, "direct", 75_700.0),
            (Metric::HttpRps, "bulwark", 41_000.0),
            (Metric::HttpRps, "bulwark", 40_000.0),
            (Metric::HttpRps, "bulwark", 39_000.0),
            (Metric::HttpRps, "envoy", 29_800.0),
        ]);
        let table = render(&run);
        assert!(
            table.contains("| requests/s | 75,700 | 40,000 | 29,800 | 1.34 |"),
            "{table}"
        );
        assert!(table.contains("| CPU µs per request, HTTP/1.1 closed loop | — | — | — | — |"));
    }

    #[test]
    fn ratios_within_each_round_and_their_median() {
        let mut run = Run::default();
        run.meta.rounds = 3;
        for (round, bulwark, envoy) in [
            (1, 30_000.0, 20_000.0),
            (2, 24_000.0, 20_000.0),
            (3, 28_000.0, 16_000.0),
        ] {
            run.round = round;
            run.push(Metric::GrpcRps, "bulwark", bulwark);
            run.push(Metric::GrpcRps, "envoy", envoy);
        }
        // Medians over all rounds: 28,000 / 20,000 = 1.40; within rounds: 1.50, 1.20, 1.75.
        let table = render(&run);
        assert!(
            table.contains("| requests/s | — | 28,000 | 20,000 | 1.40 |"),
            "{table}"
        );
        assert!(
            table.contains("| ratio | round 1 | round 2 | round 3 | median |"),
            "{table}"
        );
        assert!(
            table.contains("| gRPC requests/s | 1.50 | 1.20 | 1.75 | 1.50 |"),
            "{table}"
        );
        assert!(
            table.contains("| CPU µs per request, gRPC | — | — | — | — |"),
            "{table}"
        );
    }

    #[test]
    fn a_run_directory_with_everything_missing_lists_problems() {
        let dir = std::env::temp_dir().join(format!("bulwark-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("raw")).unwrap();
        std::fs::write(dir.join("meta.json"), r#"{"rounds": 1, "seconds": 3}"#).unwrap();
        let run = load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            run.problems
                .iter()
                .any(|p| p.starts_with("r1.bulwark.wrk.txt: missing")),
            "{:?}",
            run.problems
        );
        assert!(render(&run).contains("Problems:\n\n- r1.direct.wrk.txt: missing"));
    }
}
