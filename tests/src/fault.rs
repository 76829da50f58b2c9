//! Fault injection for the test upstreams, chosen per request by `x-fault-*` headers (gRPC
//! metadata is the same headers) so that one upstream serves many scenarios, or for every
//! request by the builders' `fault(...)` / `always_fail(...)`.
//!
//! | header | effect |
//! | --- | --- |
//! | `x-fault-status: 503` | answer this HTTP status (HTTP upstream), body `injected failure` |
//! | `x-fault-grpc: 14` | answer this gRPC code trailers-only, message `injected failure` (gRPC upstream) |
//! | `x-fault-delay-ms: N` | wait N ms first (a cancellation while waiting is counted) |
//! | `x-fault-reset: 1` | reset without answering: HTTP/1.1 closes the connection, HTTP/2 sends `RST_STREAM` |
//! | `x-fault-retry-after: 2` | add `Retry-After: 2` to the failure |
//! | `x-fault-pushback-ms: N` | add `grpc-retry-pushback-ms: N` to the failure (N may be negative) |
//! | `x-fault-first: N` | only the first N requests with the same `x-fault-key` are faulted; later ones are served normally |
//! | `x-fault-key: K` | the counter `x-fault-first` uses, and the key of [`crate::HttpUpstream::attempts_for`] |
//!
//! A delay alone delays and then serves normally. Request headers win over the builder's fault.
//! Without `x-fault-key` a request counts under the empty key.
//!
//! Fault headers travel with the request wherever the sidecar sends it, failover targets
//! included; to fail one upstream and not another, give that one a builder fault.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::time::Instant;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use crate::body::Body;

pub const STATUS: &str = "x-fault-status";
pub const GRPC: &str = "x-fault-grpc";
pub const DELAY_MS: &str = "x-fault-delay-ms";
pub const RESET: &str = "x-fault-reset";
pub const RETRY_AFTER: &str = "x-fault-retry-after";
pub const PUSHBACK_MS: &str = "x-fault-pushback-ms";
pub const FIRST: &str = "x-fault-first";
pub const KEY: &str = "x-fault-key";

/// The body (HTTP) and `grpc-message` (gRPC) of an injected failure.
pub const INJECTED: &str = "injected failure";

/// What an upstream does to a request instead of (or before) serving it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    pub status: Option<u16>,
    pub grpc: Option<i32>,
    pub delay: Option<Duration>,
    pub reset: bool,
    pub retry_after: Option<String>,
    pub pushback_ms: Option<String>,
    pub first: Option<u64>,
    pub key: Option<String>,
}

impl Fault {
    pub fn new() -> Fault {
        Fault::default()
    }

    /// Answer this HTTP status.
    pub fn status(mut self, status: u16) -> Fault {
        self.status = Some(status);
        self
    }

    /// Answer this gRPC code, trailers-only.
    pub fn grpc(mut self, code: tonic::Code) -> Fault {
        self.grpc = Some(code as i32);
        self
    }

    /// Wait this long first.
    pub fn delay_ms(mut self, ms: u64) -> Fault {
        self.delay = Some(Duration::from_millis(ms));
        self
    }

    /// Reset the stream (HTTP/2) or close the connection (HTTP/1.1) without answering.
    pub fn reset(mut self) -> Fault {
        self.reset = true;
        self
    }

    /// `Retry-After` on the failure, e.g. `"2"` (seconds) or an HTTP date.
    pub fn retry_after(mut self, value: &str) -> Fault {
        self.retry_after = Some(value.to_string());
        self
    }

    /// `grpc-retry-pushback-ms` on the failure; negative asks the client not to retry.
    pub fn pushback_ms(mut self, ms: i64) -> Fault {
        self.pushback_ms = Some(ms.to_string());
        self
    }

    /// Fault only the first `n` requests with this fault's key.
    pub fn first(mut self, n: u64) -> Fault {
        self.first = Some(n);
        self
    }

    /// The key requests are counted under (see [`Fault::first`] and `attempts_for`).
    pub fn key(mut self, key: &str) -> Fault {
        self.key = Some(key.to_string());
        self
    }

    /// The request headers that ask an upstream for this fault.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(s) = self.status {
            out.push((STATUS, s.to_string()));
        }
        if let Some(c) = self.grpc {
            out.push((GRPC, c.to_string()));
        }
        if let Some(d) = self.delay {
            out.push((DELAY_MS, d.as_millis().to_string()));
        }
        if self.reset {
            out.push((RESET, "1".to_string()));
        }
        if let Some(v) = &self.retry_after {
            out.push((RETRY_AFTER, v.clone()));
        }
        if let Some(v) = &self.pushback_ms {
            out.push((PUSHBACK_MS, v.clone()));
        }
        if let Some(n) = self.first {
            out.push((FIRST, n.to_string()));
        }
        if let Some(k) = &self.key {
            out.push((KEY, k.clone()));
        }
        out
    }

    /// Adds [`Fault::headers`] to a request under construction.
    pub fn apply(&self, mut req: http::request::Builder) -> http::request::Builder {
        for (name, value) in self.headers() {
            req = req.header(name, value);
        }
        req
    }

    /// A request of `method` to `uri` carrying this fault's headers; finish it with `.body(...)`.
    pub fn request(&self, method: Method, uri: &str) -> http::request::Builder {
        self.apply(http::Request::builder().method(method).uri(uri))
    }

    /// `GET uri` with no body, carrying this fault's headers.
    pub fn get(&self, uri: &str) -> http::Request<Body> {
        self.request(Method::GET, uri)
            .body(crate::client::empty())
            .expect("a valid request")
    }

    /// Adds [`Fault::headers`] to a header map (e.g. of a `grpc_wire` request).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.headers() {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).expect("fault header values are ASCII"),
            );
        }
    }

    /// Adds [`Fault::headers`] to a tonic request's metadata.
    pub fn insert_into_metadata(&self, metadata: &mut MetadataMap) {
        for (name, value) in self.headers() {
            metadata.insert(
                MetadataKey::from_static(name),
                MetadataValue::try_from(value.as_str()).expect("fault header values are ASCII"),
            );
        }
    }

    /// The fault a request's headers ask for; `Ok(None)` when they ask for none (`x-fault-key`
    /// alone asks for none). A malformed value is an error the upstream answers with 400, so
    /// that a test's typo fails loudly instead of silently not injecting.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Fault>, String> {
        fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::trim)
                        .map_err(|_| format!("{name} is not text"))
                })
                .transpose()
        }
        fn number<T: std::str::FromStr>(
            headers: &HeaderMap,
            name: &str,
        ) -> Result<Option<T>, String> {
            text(headers, name)?
                .map(|v| {
                    v.parse()
                        .map_err(|_| format!("{name}: {v:?} is not a number"))
                })
                .transpose()
        }
        let fault = Fault {
            status: number(headers, STATUS)?,
            grpc: number(headers, GRPC)?,
            delay: number::<u64>(headers, DELAY_MS)?.map(Duration::from_millis),
            reset: match text(headers, RESET)? {
                None | Some("0") | Some("false") => false,
                Some(_) => true,
            },
            retry_after: text(headers, RETRY_AFTER)?.map(str::to_string),
            pushback_ms: number::<i64>(headers, PUSHBACK_MS)?.map(|n| n.to_string()),
            first: number(headers, FIRST)?,
            key: text(headers, KEY)?.map(str::to_string),
        };
        if let Some(s) = fault.status
            && !(100..=599).contains(&s)
        {
            return Err(format!("{STATUS}: {s} is not an HTTP status"));
        }
        let asks = Fault {
            key: None,
            ..fault.clone()
        };
        Ok((asks != Fault::default()).then_some(fault))
    }
}

/// The key a request is counted under: its `x-fault-key`, else the empty key.
pub(crate) fn request_key(headers: &HeaderMap) -> String {
    headers
        .get(KEY)
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_string())
        .unwrap_or_default()
}

/// An address of 127.0.0.1 where nothing listens, so connecting to it is refused. Its port is
/// held by a socket bound for the whole test process and never listening: no other test can
/// take it (a port merely released could be bound again by a test running beside this one).
pub fn refused_addr() -> SocketAddr {
    static REFUSED: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();
    *REFUSED.get_or_init(|| {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("an address"))
            .expect("bind 127.0.0.1:0");
        let addr = socket.local_addr().expect("the bound address");
        // Held, not listening, for as long as the process runs.
        std::mem::forget(socket);
        addr
    })
}

/// The time between consecutive arrivals (`arrivals_for`), i.e. what each retry waited plus
/// the round trip of the attempt before it.
pub fn gaps(arrivals: &[Instant]) -> Vec<Duration> {
    arrivals
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let fault = Fault::new()
            .status(503)
            .delay_ms(20)
            .reset()
            .retry_after("2")
            .pushback_ms(-1)
            .first(3)
            .key("k1");
        let mut map = HeaderMap::new();
        fault.insert_into(&mut map);
        assert_eq!(Fault::from_headers(&map), Ok(Some(fault)));
        assert_eq!(request_key(&map), "k1");

        let grpc = Fault::new().grpc(tonic::Code::Unavailable);
        let mut map = HeaderMap::new();
        grpc.insert_into(&mut map);
        assert_eq!(map.get(GRPC).map(|v| v.as_bytes()), Some(&b"14"[..]));
        assert_eq!(Fault::from_headers(&map), Ok(Some(grpc)));
    }

    #[test]
    fn a_key_alone_asks_for_nothing_and_typos_are_errors() {
        let mut map = HeaderMap::new();
        assert_eq!(Fault::from_headers(&map), Ok(None));
        assert_eq!(request_key(&map), "");
        map.insert(KEY, HeaderValue::from_static("k"));
        assert_eq!(Fault::from_headers(&map), Ok(None));
        map.insert(STATUS, HeaderValue::from_static("five hundred"));
        assert!(Fault::from_headers(&map).is_err());
        map.insert(STATUS, HeaderValue::from_static("999"));
        assert!(Fault::from_headers(&map).is_err());
    }

    #[test]
    fn refused_addr_refuses() {
        let addr = refused_addr();
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
