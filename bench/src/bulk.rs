//! A large body through a proxy: one HTTP/1.1 download (`GET /bytes/N`) or upload
//! (`POST /sink`, which answers with the byte count it read), timed from sending the request to
//! the end of the response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, StreamBody};
use serde::{Deserialize, Serialize};

use crate::{BoxError, http1};

/// What the load tool prints for a transfer (one JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulkReport {
    /// `download` or `upload`.
    pub direction: String,
    /// The body size asked for.
    pub bytes: u64,
    /// The bytes that arrived (download: received; upload: what the upstream says it read).
    pub transferred: u64,
    pub status: u16,
    pub seconds: f64,
    /// Megabytes (10^6 bytes) per second.
    pub mb_per_second: f64,
    pub error: Option<String>,
    /// Transfers made; the figures above are then the median transfer's (by speed), and
    /// `error` the first error.
    #[serde(default = "one")]
    pub transfers: u32,
}

fn one() -> u32 {
    1
}

/// Upload chunk size, as the test upstream's `/bytes` sends.
const CHUNK: usize = 64 * 1024;

impl BulkReport {
    fn new(direction: &str, bytes: u64) -> BulkReport {
        BulkReport {
            direction: direction.to_string(),
            bytes,
            transferred: 0,
            status: 0,
            seconds: 0.0,
            mb_per_second: 0.0,
            error: None,
            transfers: 1,
        }
    }

    fn finish(mut self, start: Instant, result: Result<(), BoxError>) -> BulkReport {
        self.seconds = start.elapsed().as_secs_f64();
        if self.seconds > 0.0 {
            self.mb_per_second = self.transferred as f64 / 1e6 / self.seconds;
        }
        if let Err(e) = result {
            self.error = Some(e.to_string());
        } else if self.transferred != self.bytes {
            self.error = Some(format!(
                "{} of {} bytes arrived",
                self.transferred, self.bytes
            ));
        }
        self
    }
}

/// `GET /bytes/{bytes}` with `Host: host`, reading the body as it streams.
pub async fn download(addr: SocketAddr, host: &str, bytes: u64) -> BulkReport {
    let mut report = BulkReport::new("download", bytes);
    let start = Instant::now();
    let result = async {
        let mut sender = http1::connect::<Empty<Bytes>>(addr).await?;
        let req = Request::get(format!("/bytes/{bytes}"))
            .header(header::HOST, HeaderValue::from_str(host)?)
            .body(Empty::new())?;
        let res = sender.send_request(req).await?;
        report.status = res.status().as_u16();
        let mut body = res.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                report.transferred += data.len() as u64;
            }
        }
        Ok(())
    }
    .await;
    report.finish(start, result)
}

/// `POST /sink` with a `bytes`-long body (`Content-Length` set) and `Host: host`.
pub async fn upload(addr: SocketAddr, host: &str, bytes: u64) -> BulkReport {
    let mut report = BulkReport::new("upload", bytes);
    let start = Instant::now();
    let result = async {
        let chunk = Bytes::from(vec![0x5a; CHUNK]);
        let frames = (0..bytes.div_ceil(CHUNK as u64)).map(move |i| {
            let len = (bytes - i * CHUNK as u64).min(CHUNK as u64) as usize;
            Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
        });
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let mut sender = http1::connect(addr).await?;
        let req = Request::post("/sink")
            .header(header::HOST, HeaderValue::from_str(host)?)
            .header(header::CONTENT_LENGTH, bytes)
            .body(body)?;
        let res = sender.send_request(req).await?;
        report.status = res.status().as_u16();
        let answer = res.into_body().collect().await?.to_bytes();
        let read: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|e| format!("the upstream's answer is not JSON ({e}): {answer:?}"))?;
        report.transferred = read["bytes"].as_u64().unwrap_or(0);
        Ok(())
    }
    .await;
    report.finish(start, result)
}

/// Several transfers as one report: the median by speed (the lower middle one for an even count)
/// with the first error, if any.
pub fn median(mut reports: Vec<BulkReport>) -> Option<BulkReport> {
    let transfers = u32::try_from(reports.len()).unwrap_or(u32::MAX);
    let error = reports.iter().find_map(|r| r.error.clone());
    reports.sort_by(|a, b| a.mb_per_second.total_cmp(&b.mb_per_second));
    let mut median = reports.get(reports.len().checked_sub(1)? / 2)?.clone();
    median.transfers = transfers;
    median.error = error;
    Some(median)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(mb_per_second: f64, error: Option<&str>) -> BulkReport {
        BulkReport {
            mb_per_second,
            error: error.map(str::to_string),
            ..BulkReport::new("download", 100)
        }
    }

    #[test]
    fn median_transfer_with_the_first_error() {
        let m = median(vec![
            at(900.0, None),
            at(300.0, Some("reset")),
            at(600.0, None),
        ])
        .unwrap();
        assert_eq!(m.mb_per_second, 600.0);
        assert_eq!(m.transfers, 3);
        assert_eq!(m.error.as_deref(), Some("reset"));
        assert!(median(Vec::new()).is_none());
    }
}
