//! Goodput under overload (`bench/overload`): open-loop load on an app of known capacity, a mix
//! of criticality tiers, and per tier what came back — served within the deadline, served late,
//! refused, or not answered. Goodput is what was served within the deadline, per second, as a
//! share of the app's capacity. The load ([`run`]) and the report ([`render`], [`plot`]) are
//! here; the script starts the app and the proxies.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::BoxError;
use crate::grpc::connect;
use crate::latency::{Latencies, Percentiles};
use crate::pace::{self, Schedule};

/// The tiers of the mix, most critical first, and the header they are named in.
pub const TIERS: [&str; 3] = ["critical", "sheddable-plus", "sheddable"];
pub const CRITICALITY_HEADER: &str = "x-bulwark-criticality";

/// The tier (index into [`TIERS`]) of the `i`-th request: of every ten, 1 critical, 4
/// sheddable-plus and 5 sheddable, interleaved so every tier arrives evenly. With one in ten
/// critical, the critical requests alone stay within the app's capacity up to 10× (at 5× they
/// are half of it): what a tier may expect when there is not room for all.
pub fn tier_of(i: u64) -> usize {
    match i % 10 {
        0 => 0,
        2 | 4 | 6 | 8 => 1,
        _ => 2,
    }
}

/// What came back for one tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TierResult {
    pub sent: u64,
    /// 200 within the deadline.
    pub good: u64,
    /// 200, after the deadline.
    pub late: u64,
    /// Answered with another status (a proxy's refusal, the app's error).
    pub refused: u64,
    /// Not answered: the connection or stream failed, or no answer within the timeout.
    pub errors: u64,
    /// Latency of the answers served within the deadline.
    pub latency: Option<Percentiles>,
    /// Time to a refusal.
    pub refusal_latency: Option<Percentiles>,
    pub first_refusal: Option<String>,
    pub first_error: Option<String>,
}

impl TierResult {
    /// The share of requests served within the deadline.
    pub fn success(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.good as f64 / self.sent as f64
    }
}

/// One run: one target at one offered load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub target: String,
    /// Offered load as a multiple of capacity.
    pub load: f64,
    pub capacity_rps: f64,
    pub offered_rps: f64,
    pub seconds: f64,
    pub deadline_ms: f64,
    /// Per tier, in [`TIERS`] order.
    pub tiers: Vec<TierResult>,
    /// How long refusals took, every tier's together: what a refused caller waits for its
    /// answer. (A tier's own tail, from a few hundred refusals at low loads, is its few slowest
    /// and says more about the machine than the proxy.)
    #[serde(default)]
    pub refusal_latency: Option<Percentiles>,
    /// Answers served within the deadline per second, as a share of capacity.
    pub goodput: f64,
    /// The most requests in the app at once (at work or waiting for a worker), when known.
    pub app_concurrency: Option<u64>,
}

#[derive(Debug, Default)]
struct Tally {
    tiers: [TierCount; 3],
    trace: Vec<Traced>,
}

/// One request of a run: when it was due (from the start), its tier, how it ended and how long
/// it took — for `bulwark-overload run --trace`, to see when in a run the slow ones came.
#[derive(Debug, Clone, Copy)]
pub struct Traced {
    pub at: Duration,
    pub tier: usize,
    pub outcome: &'static str,
    pub took: Duration,
}

#[derive(Debug, Default)]
struct TierCount {
    result: TierResult,
    latencies: Latencies,
    refusals: Latencies,
}

/// GET `path` with each request's tier in [`CRITICALITY_HEADER`], over `connections` HTTP/2
/// connections (prior knowledge) round-robin; a closed connection is replaced.
pub struct TieredGet {
    addr: SocketAddr,
    uri: Uri,
    connections: Vec<tokio::sync::Mutex<SendRequest<Full<Bytes>>>>,
    next: AtomicUsize,
}

/// How one request ended.
enum Answer {
    Ok,
    Refused(String),
    Error(String),
}

impl TieredGet {
    pub async fn new(
        addr: SocketAddr,
        authority: &str,
        path: &str,
        connections: usize,
    ) -> Result<TieredGet, BoxError> {
        let mut conns = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            conns.push(tokio::sync::Mutex::new(connect(addr).await?));
        }
        Ok(TieredGet {
            addr,
            uri: format!("http://{authority}{path}").parse()?,
            connections: conns,
            next: AtomicUsize::new(0),
        })
    }

    async fn get(&self, tier: usize) -> Result<Answer, BoxError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut sender = {
            let mut slot = self.connections[i].lock().await;
            if slot.is_closed() {
                *slot = connect(self.addr).await?;
            }
            slot.clone()
        };
        sender.ready().await?;
        let req = Request::get(self.uri.clone())
            .header(CRITICALITY_HEADER, HeaderValue::from_static(TIERS[tier]))
            .body(Full::new(Bytes::new()))?;
        let res = sender.send_request(req).await?;
        let status = res.status();
        let reason = res
            .headers()
            .get("x-bulwark-error")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        res.into_body().collect().await?;
        Ok(if status == StatusCode::OK {
            Answer::Ok
        } else {
            Answer::Refused(match reason {
                Some(r) => format!("HTTP {} ({r})", status.as_u16()),
                None => format!("HTTP {}", status.as_u16()),
            })
        })
    }
}

/// How a run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub rate: f64,
    pub duration: Duration,
    /// An answer after this is late: not goodput.
    pub deadline: Duration,
    /// An answer after this is not waited for (an error).
    pub timeout: Duration,
}

/// What a run counted.
#[derive(Debug)]
pub struct Counted {
    /// Per tier, in [`TIERS`] order.
    pub tiers: Vec<TierResult>,
    /// How long refusals took, every tier's together.
    pub refusal_latency: Option<Percentiles>,
    /// Every request, in the order they were due.
    pub trace: Vec<Traced>,
}

/// Sends `shape.rate` requests a second for `shape.duration`, tiers by [`tier_of`], and
/// counts per tier. Must run inside a tokio runtime.
pub async fn run(caller: Arc<TieredGet>, shape: Shape) -> anyhow::Result<Counted> {
    let handle = tokio::runtime::Handle::current();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (in_flight, mut all_done) = mpsc::channel::<()>(1);
    let start = Instant::now() + Duration::from_millis(20);
    let schedule = Schedule::new(start, shape.rate, shape.duration);
    let pacer_tally = tally.clone();
    let pacer = std::thread::spawn(move || {
        let mut i = 0u64;
        pace::run(&schedule, |intended| {
            let tier = tier_of(i);
            i += 1;
            let (caller, tally, in_flight) =
                (caller.clone(), pacer_tally.clone(), in_flight.clone());
            handle.spawn(async move {
                let answer = match tokio::time::timeout(shape.timeout, caller.get(tier)).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(e)) => Answer::Error(e.to_string()),
                    Err(_) => Answer::Error(format!("no answer within {:?}", shape.timeout)),
                };
                let took = Instant::now().saturating_duration_since(intended);
                let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
                let outcome = match &answer {
                    Answer::Ok if took <= shape.deadline => "good",
                    Answer::Ok => "late",
                    Answer::Refused(_) => "refused",
                    Answer::Error(_) => "error",
                };
                tally.trace.push(Traced {
                    at: intended.saturating_duration_since(start),
                    tier,
                    outcome,
                    took,
                });
                let t = &mut tally.tiers[tier];
                t.result.sent += 1;
                match answer {
                    Answer::Ok if took <= shape.deadline => {
                        t.result.good += 1;
                        t.latencies.record(took);
                    }
                    Answer::Ok => t.result.late += 1,
                    Answer::Refused(why) => {
                        t.result.refused += 1;
                        t.refusals.record(took);
                        t.result.first_refusal.get_or_insert(why);
                    }
                    Answer::Error(why) => {
                        t.result.errors += 1;
                        t.result.first_error.get_or_insert(why);
                    }
                }
                drop(in_flight);
            });
        });
    });
    tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let _ = tokio::time::timeout(shape.timeout + Duration::from_secs(1), all_done.recv()).await;
    let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let mut refusals = Latencies::default();
    for t in &tally.tiers {
        refusals.extend(&t.refusals);
    }
    let tiers = tally
        .tiers
        .iter_mut()
        .map(|t| {
            let mut result = t.result.clone();
            result.latency = t.latencies.percentiles();
            result.refusal_latency = t.refusals.percentiles();
            result
        })
        .collect();
    let mut trace = std::mem::take(&mut tally.trace);
    trace.sort_by_key(|t| t.at);
    Ok(Counted {
        tiers,
        refusal_latency: refusals.percentiles(),
        trace,
    })
}

/// Goodput of `tiers` over `seconds`, as a share of `capacity_rps`.
pub fn goodput(tiers: &[TierResult], seconds: f64, capacity_rps: f64) -> f64 {
    let good: u64 = tiers.iter().map(|t| t.good).sum();
    good as f64 / seconds / capacity_rps
}

/// Targets in the order the report lists them, with their labels.
pub const TARGETS: [(&str, &str); 4] = [
    ("direct", "no proxy"),
    ("bulwark", "Bulwark, adaptiveConcurrency"),
    ("envoy-adaptive", "Envoy, adaptive_concurrency"),
    ("envoy-breakers", "Envoy, circuit breakers"),
];

fn label(target: &str) -> &str {
    TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map_or(target, |(_, l)| l)
}

/// `f(p)` in milliseconds with `decimals` decimals, or a dash.
fn ms(p: &Option<Percentiles>, decimals: usize, f: impl Fn(&Percentiles) -> f64) -> String {
    p.as_ref().map_or("—".to_string(), |p| {
        format!("{:.decimals$}", f(p) / 1000.0)
    })
}

/// The report's table: one row per target and load.
pub fn render(points: &[Point]) -> String {
    let mut out = String::new();
    out.push_str("| target | offered | goodput | critical | sheddable-plus | sheddable | critical p50 / p99 ms | refusal p50 / p99 ms | app concurrency |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for (target, _) in TARGETS {
        let mut rows: Vec<&Point> = points.iter().filter(|p| p.target == target).collect();
        rows.sort_by(|a, b| a.load.total_cmp(&b.load));
        for p in rows {
            let tier = |i: usize| p.tiers.get(i).cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {}× | {:.0}% | {:.1}% | {:.1}% | {:.1}% | {} / {} | {} / {} | {} |",
                label(&p.target),
                p.load,
                p.goodput * 100.0,
                tier(0).success() * 100.0,
                tier(1).success() * 100.0,
                tier(2).success() * 100.0,
                ms(&tier(0).latency, 0, |l| l.p50_us),
                ms(&tier(0).latency, 0, |l| l.p99_us),
                ms(&p.refusal_latency, 1, |l| l.p50_us),
                ms(&p.refusal_latency, 1, |l| l.p99_us),
                p.app_concurrency.map_or("—".to_string(), |c| c.to_string()),
            );
        }
    }
    out
}

const COLOURS: [&str; 4] = ["#777777", "#1f77b4", "#d62728", "#ff7f0e"];
const DASHES: [&str; 4] = ["4 3", "", "", "2 2"];

/// Two panels as SVG: goodput, and critical-tier success, against offered load (log scale),
/// one line per target.
pub fn plot(points: &[Point]) -> String {
    let (w, h) = (900.0, 380.0);
    let panel = |x0: f64, title: &str, value: &dyn Fn(&Point) -> f64| -> String {
        let (pw, ph, left, top) = (340.0, 250.0, x0 + 60.0, 50.0);
        let loads: Vec<f64> = {
            let mut l: Vec<f64> = points.iter().map(|p| p.load).collect();
            l.sort_by(f64::total_cmp);
            l.dedup();
            l
        };
        let (lo, hi) = (
            loads.first().copied().unwrap_or(0.5).ln(),
            loads.last().copied().unwrap_or(10.0).ln(),
        );
        let x = |load: f64| left + (load.ln() - lo) / (hi - lo).max(1e-9) * pw;
        let y = |v: f64| top + ph - v.clamp(0.0, 1.1) / 1.1 * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<text x="{}" y="30" font-size="15" font-weight="bold">{title}</text>"#,
            left
        );
        for v in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let _ = write!(
                s,
                r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#dddddd"/><text x="{}" y="{}" font-size="11" text-anchor="end">{:.0}%</text>"##,
                left + pw,
                left - 6.0,
                y(v) + 4.0,
                v * 100.0,
                y = y(v)
            );
        }
        for load in &loads {
            let _ = write!(
                s,
                r##"<line x1="{x}" x2="{x}" y1="{top}" y2="{}" stroke="#eeeeee"/><text x="{x}" y="{}" font-size="11" text-anchor="middle">{load}×</text>"##,
                top + ph,
                top + ph + 16.0,
                x = x(*load)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">offered load (× capacity)</text>"#,
            left + pw / 2.0,
            top + ph + 34.0
        );
        for (i, (target, _)) in TARGETS.iter().enumerate() {
            let mut line: Vec<&Point> = points.iter().filter(|p| p.target == *target).collect();
            line.sort_by(|a, b| a.load.total_cmp(&b.load));
            let coords: Vec<String> = line
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.load), y(value(p))))
                .collect();
            if coords.is_empty() {
                continue;
            }
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="2.5" stroke-dasharray="{}" points="{}"/>"#,
                COLOURS[i],
                DASHES[i],
                coords.join(" ")
            );
            for c in &coords {
                let (cx, cy) = c.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(
                    s,
                    r#"<circle cx="{cx}" cy="{cy}" r="3.5" fill="{}"/>"#,
                    COLOURS[i]
                );
            }
        }
        s
    };
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif"><rect width="{w}" height="{h}" fill="white"/>"#
    );
    svg.push_str(&panel(0.0, "Goodput (served within the deadline)", &|p| {
        p.goodput
    }));
    svg.push_str(&panel(
        450.0,
        "Critical requests served within the deadline",
        &|p| p.tiers.first().map_or(0.0, TierResult::success),
    ));
    for (i, (_, name)) in TARGETS.iter().enumerate() {
        let lx = 60.0 + i as f64 * 210.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="360" y2="360" stroke="{}" stroke-width="2.5" stroke-dasharray="{}"/><text x="{}" y="364" font-size="12">{name}</text>"#,
            lx + 24.0,
            COLOURS[i],
            DASHES[i],
            lx + 30.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_one_four_five_of_every_ten() {
        let mut n = [0; 3];
        for i in 0..1000 {
            n[tier_of(i)] += 1;
        }
        assert_eq!(n, [100, 400, 500]);
    }

    fn point(target: &str, load: f64, good: [u64; 3]) -> Point {
        let tiers: Vec<TierResult> = good
            .iter()
            .map(|&g| TierResult {
                sent: 100,
                good: g,
                refused: 100 - g,
                ..TierResult::default()
            })
            .collect();
        Point {
            target: target.into(),
            load,
            capacity_rps: 100.0,
            offered_rps: 100.0 * load,
            seconds: 1.0,
            deadline_ms: 1000.0,
            goodput: goodput(&tiers, 1.0, 100.0),
            tiers,
            refusal_latency: None,
            app_concurrency: Some(8),
        }
    }

    #[test]
    fn the_table_lists_every_target_by_load_and_the_plot_draws_a_line_each() {
        let points = [
            point("envoy-adaptive", 2.0, [50, 50, 50]),
            Point {
                refusal_latency: Some(Percentiles {
                    count: 200,
                    p50_us: 400.0,
                    p90_us: 600.0,
                    p99_us: 1260.0,
                    p999_us: 2000.0,
                    max_us: 3000.0,
                }),
                ..point("bulwark", 2.0, [100, 0, 0])
            },
            point("bulwark", 0.5, [100, 100, 100]),
        ];
        let table = render(&points);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(
            rows,
            [
                "| Bulwark, adaptiveConcurrency | 0.5× | 300% | 100.0% | 100.0% | 100.0% | — / — | — / — | 8 |",
                "| Bulwark, adaptiveConcurrency | 2× | 100% | 100.0% | 0.0% | 0.0% | — / — | 0.4 / 1.3 | 8 |",
                "| Envoy, adaptive_concurrency | 2× | 150% | 50.0% | 50.0% | 50.0% | — / — | — / — | 8 |",
            ]
        );
        let svg = plot(&points);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Two panels, each with a line for Bulwark and one for Envoy.
        assert_eq!(svg.matches("<polyline").count(), 4);
    }
}
