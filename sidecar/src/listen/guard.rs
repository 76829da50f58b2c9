//! A guard on the bytes of a downstream HTTP/1.1 connection on their way to hyper. It follows
//! each request's framing — the head, then a body by `Content-Length` or by chunks — to catch
//! what hyper hides or does not do:
//!
//! - a head framed both by `Content-Length` and `Transfer-Encoding` (request smuggling): hyper
//!   drops the length and reads chunks; the guard marks the request ([`Framing`]) and the proxy
//!   answers it 400 and closes (what Envoy does by default);
//! - a request head that has begun but not arrived within the header-read timeout (a slowloris
//!   client): the guard answers 408 itself and closes. A connection that sends nothing at all
//!   in that time is closed without an answer.
//!
//! The timer starts when hyper starts waiting for a head: when the connection opens and when a
//! response ends. Anything the guard cannot follow (HTTP/2, an upgrade or `CONNECT`, a framing
//! hyper will refuse anyway) makes it step aside for the rest of the connection; hyper's own
//! checks (and its header-read timeout, set a little later as a backstop) still apply.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::activity::Activity;
use crate::metrics::Metrics;

/// Retained of a head line: enough for every name the guard reads and a long
/// `Transfer-Encoding` value.
const LINE_KEPT: usize = 256;

/// Marks a request whose head had both `Content-Length` and `Transfer-Encoding` (the proxy
/// refuses it).
#[derive(Debug, Clone, Copy)]
pub struct FramedTwice;

/// The requests of a connection the guard found framed both ways, by their index (0 for the
/// connection's first request), in the order hyper hands them to the proxy.
#[derive(Debug, Default)]
pub struct Framing {
    any: AtomicBool,
    twice: Mutex<Vec<u64>>,
}

impl Framing {
    /// Whether request `index` of the connection had both `Content-Length` and
    /// `Transfer-Encoding`.
    pub fn framed_twice(&self, index: u64) -> bool {
        self.any.load(Ordering::Acquire)
            && self
                .twice
                .lock()
                .map(|twice| twice.contains(&index))
                .unwrap_or(true)
    }

    fn mark(&self, index: u64) {
        if let Ok(mut twice) = self.twice.lock() {
            twice.push(index);
        }
        self.any.store(true, Ordering::Release);
    }
}

/// Where the guard is in the byte stream.
#[derive(Debug)]
enum State {
    Head(Head),
    /// A body with this many bytes left.
    Length(u64),
    /// A chunk-size line: the size so far, and whether the digits ended (extensions follow).
    ChunkSize {
        size: u64,
        digits: u32,
        done: bool,
    },
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines after the last chunk, until an empty one.
    Trailers {
        empty: bool,
    },
    /// Stepped aside for the rest of the connection.
    Off,
}

/// A request head being read.
#[derive(Debug, Default)]
struct Head {
    /// A byte of the request line arrived (leading empty lines do not count).
    started: bool,
    /// The first bytes of a line split across reads, and its length so far.
    line: Vec<u8>,
    line_len: usize,
    request_line_done: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    /// Something the guard does not follow (an upgrade, CONNECT, HTTP/2, a framing hyper
    /// refuses): step aside after this head.
    step_aside: bool,
}

/// What the guard follows of the byte stream; pure, so that it can be tested byte by byte.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Heads completed so far.
    heads: u64,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Head(Head::default()),
            heads: 0,
        }
    }
}

impl Scanner {
    /// Follows `bytes`; marks in `framing` each head framed both ways.
    pub fn feed(&mut self, mut bytes: &[u8], framing: &Framing) {
        while !bytes.is_empty() {
            let used = match &mut self.state {
                State::Off => return,
                State::Head(_) => self.head_bytes(bytes, framing),
                State::Length(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::Head(Head::default());
                    }
                    n as usize
                }
                State::ChunkSize { size, digits, done } => {
                    let mut used = 0;
                    for &b in bytes {
                        used += 1;
                        if b == b'\n' {
                            let size = *size;
                            if *digits == 0 {
                                self.state = State::Off;
                            } else if size == 0 {
                                self.state = State::Trailers { empty: true };
                            } else {
                                self.state = State::ChunkData(size);
                            }
                            break;
                        }
                        if *done {
                            continue;
                        }
                        match (b as char).to_digit(16) {
                            // More than 16 hex digits: hyper refuses it; so does the guard's
                            // arithmetic.
                            Some(_) if *digits >= 16 => {
                                self.state = State::Off;
                                break;
                            }
                            Some(d) => {
                                *size = (*size << 4) | u64::from(d);
                                *digits += 1;
                            }
                            None => *done = true,
                        }
                    }
                    used
                }
                State::ChunkData(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.state = State::ChunkEnd;
                    }
                    n as usize
                }
                State::ChunkEnd => match bytes.iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        self.state = State::ChunkSize {
                            size: 0,
                            digits: 0,
                            done: false,
                        };
                        at + 1
                    }
                    None => bytes.len(),
                },
                State::Trailers { empty } => {
                    let mut used = 0;
                    for &b in bytes {
                        used += 1;
                        match b {
                            b'\n' if *empty => {
                                self.state = State::Head(Head::default());
                                break;
                            }
                            b'\n' => *empty = true,
                            b'\r' => {}
                            _ => *empty = false,
                        }
                    }
                    used
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// Whether a request head has begun and not ended.
    pub fn head_begun(&self) -> bool {
        matches!(&self.state, State::Head(head) if head.started)
    }

    /// Whether the guard stepped aside.
    pub fn is_off(&self) -> bool {
        matches!(self.state, State::Off)
    }

    /// Reads head bytes up to the end of one line; how many it used. A line that arrives
    /// whole is read in place; only one split across reads is copied (its first bytes).
    fn head_bytes(&mut self, bytes: &[u8], framing: &Framing) -> usize {
        let State::Head(head) = &mut self.state else {
            return 0;
        };
        let mut skipped = 0;
        if !head.started {
            // Empty lines before a request line are skipped (RFC 9112 §2.2).
            skipped = bytes
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(bytes.len());
            if skipped == bytes.len() {
                return skipped;
            }
            head.started = true;
        }
        let bytes = &bytes[skipped..];
        let Some(end) = memchr::memchr(b'\n', bytes) else {
            let room = LINE_KEPT.saturating_sub(head.line.len());
            head.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
            head.line_len += bytes.len();
            return skipped + bytes.len();
        };
        let whole;
        let (line, len) = if head.line_len == 0 {
            (&bytes[..end], end)
        } else {
            let room = LINE_KEPT.saturating_sub(head.line.len());
            head.line.extend_from_slice(&bytes[..end.min(room)]);
            whole = std::mem::take(&mut head.line);
            (&whole[..], head.line_len + end)
        };
        head.line_len = 0;
        let (line, len) = match line.last() {
            Some(b'\r') if line.len() == len => (&line[..line.len() - 1], len - 1),
            _ if len > 0 && len > line.len() => (line, len - 1),
            _ => (line, len),
        };
        if !head.request_line_done {
            head.request_line_done = true;
            request_line(head, line, len);
        } else if len == 0 {
            self.end_of_head(framing);
        } else {
            header_line(head, line, len);
        }
        skipped + end + 1
    }

    fn end_of_head(&mut self, framing: &Framing) {
        let index = self.heads;
        self.heads += 1;
        let State::Head(head) = std::mem::replace(&mut self.state, State::Off) else {
            return;
        };
        if head.transfer_encoding && head.content_length.is_some() {
            // The proxy refuses it and closes the connection: nothing after it matters.
            framing.mark(index);
            return;
        }
        if head.step_aside {
            return;
        }
        self.state = match (head.transfer_encoding, head.content_length) {
            (true, _) if head.chunked => State::ChunkSize {
                size: 0,
                digits: 0,
                done: false,
            },
            (true, _) => State::Off,
            (false, Some(n)) if n > 0 => State::Length(n),
            _ => State::Head(Head::default()),
        };
    }
}

/// `line` is what was kept of a line of `len` bytes (its CR dropped).
fn request_line(head: &mut Head, line: &[u8], len: usize) {
    if line.starts_with(b"PRI * HTTP/2.0") || line.starts_with(b"CONNECT ") {
        head.step_aside = true;
    }
    if len > line.len() {
        // A long target: the version at its end was not kept; hyper reads it.
        return;
    }
    if !(line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")) {
        head.step_aside = true;
    }
}

fn header_line(head: &mut Head, line: &[u8], len: usize) {
    let Some(colon) = memchr::memchr(b':', line) else {
        head.step_aside = true;
        return;
    };
    let name = &line[..colon];
    if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
        // Folded lines, whitespace before the colon: hyper refuses these.
        head.step_aside = true;
        return;
    }
    // Only three names matter; their lengths tell most lines apart at once.
    if !matches!(name.len(), 7 | 14 | 17) {
        return;
    }
    let value = line[colon + 1..].trim_ascii();
    let truncated = len > line.len();
    if name.eq_ignore_ascii_case(b"content-length") {
        let length = (!truncated && !value.is_empty() && value.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
            .flatten();
        match (length, head.content_length) {
            (Some(n), None) => head.content_length = Some(n),
            (Some(n), Some(m)) if n == m => {}
            // Unreadable or conflicting lengths: hyper refuses the request.
            _ => head.step_aside = true,
        }
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        head.transfer_encoding = true;
        // The last coding of the last field decides.
        head.chunked = !truncated
            && value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    } else if name.eq_ignore_ascii_case(b"upgrade") {
        head.step_aside = true;
    }
}

/// The 408 the guard sends, and why.
const TIMEOUT_ANSWER: &str = "the request head did not arrive within the header-read timeout\n";

/// A connection's IO with the guard on its reads.
pub struct Guarded<I> {
    inner: I,
    scanner: Scanner,
    framing: Arc<Framing>,
    activity: Arc<Activity>,
    /// The header-read timeout; without one, heads are not timed.
    timeout: Option<Duration>,
    timer: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    direction: &'static str,
    /// The 408 being written, and how much of it is out.
    answering: Option<(Vec<u8>, usize)>,
    /// Since when a head has been waited for, and the count of ended requests then.
    waiting: Option<(Instant, u64)>,
}

impl<I> Guarded<I> {
    pub fn new(
        inner: I,
        framing: Arc<Framing>,
        activity: Arc<Activity>,
        timeout: Option<Duration>,
        metrics: Arc<Metrics>,
        direction: &'static str,
    ) -> Guarded<I> {
        Guarded {
            inner,
            scanner: Scanner::default(),
            framing,
            activity,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout.unwrap_or(Duration::MAX / 4))),
            metrics,
            direction,
            answering: None,
            waiting: None,
        }
    }

    /// When the head being waited for is due: `None` while a request is in progress (no head is
    /// being waited for) or once the guard stepped aside. The wait starts when the guard first
    /// finds the connection quiet after a request ended (or opened): hyper reads for the next
    /// head from then on.
    fn head_due(&mut self) -> Option<Instant> {
        let timeout = self.timeout?;
        if !matches!(self.scanner.state, State::Head(_)) {
            return None;
        }
        let ended = self.activity.quiet()?;
        let since = match self.waiting {
            Some((since, seen)) if seen == ended => since,
            _ => {
                let now = Instant::now();
                self.waiting = Some((now, ended));
                now
            }
        };
        Some(since + timeout)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Guarded<I> {
    /// Writes the 408, then fails the read so hyper closes the connection without writing.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.answering {
            if *written == answer.len() {
                ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head did not arrive in time (answered 408)",
                )));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.answering.is_some() {
            return this.poll_answer(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.scanner.feed(&buf.filled()[before..], &this.framing);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(due) = this.head_due() else {
                    return Poll::Pending;
                };
                // A head is due later with every request that ends; the timer is not moved for
                // each (a timer-wheel update per request): it may fire early, and is re-armed
                // then.
                if this.timer.deadline() > due {
                    this.timer.as_mut().reset(due);
                }
                loop {
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if Instant::now() >= due {
                        break;
                    }
                    this.timer.as_mut().reset(due);
                }
                if !this.scanner.head_begun() {
                    // Nothing sent at all: closed without an answer.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the header-read timeout",
                    )));
                }
                this.metrics.malformed(this.direction, "head-timeout");
                tracing::debug!(
                    direction = this.direction,
                    "a request head did not arrive within the header-read timeout: 408"
                );
                let answer = format!(
                    "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nx-bulwark-error: request-timeout\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{TIMEOUT_ANSWER}",
                    TIMEOUT_ANSWER.len()
                );
                this.answering = Some((answer.into_bytes(), 0));
                this.poll_answer(cx)
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` one byte at a time and whole; both must agree. The indexes marked.
    fn marked(input: &[u8]) -> Vec<u64> {
        let whole = Framing::default();
        let mut scanner = Scanner::default();
        scanner.feed(input, &whole);
        let bytewise = Framing::default();
        let mut scanner = Scanner::default();
        for b in input {
            scanner.feed(std::slice::from_ref(b), &bytewise);
        }
        let a = whole.twice.lock().unwrap().clone();
        let b = bytewise.twice.lock().unwrap().clone();
        assert_eq!(a, b, "whole and byte by byte");
        a
    }

    #[test]
    fn a_head_framed_both_ways_is_marked_by_its_index_in_either_order() {
        let ok = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let cl_te = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let te_cl = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\nHost: x\r\n\r\n0\r\n\r\n";
        assert_eq!(marked(cl_te), vec![0]);
        assert_eq!(marked(te_cl), vec![0]);
        assert_eq!(marked(&[&ok[..], &ok[..], &cl_te[..]].concat()), vec![2]);
        // Lines longer than what is kept of them, a target and a header.
        let long = format!(
            "GET /{} HTTP/1.1\r\nCookie: {}\r\nContent-Length: 0\r\ntransfer-encoding: chunked\r\n\r\n",
            "a".repeat(1000),
            "c".repeat(5000)
        );
        assert_eq!(marked(long.as_bytes()), vec![0]);
    }

    #[test]
    fn bodies_are_skipped_by_their_framing_so_what_they_carry_is_not_a_head() {
        // Bodies that look like smuggling heads are bodies.
        let inner = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let by_length = [
            format!(
                "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                inner.len()
            )
            .as_bytes(),
            &inner[..],
        ]
        .concat();
        let chunked = [
            &b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..],
            format!("{:x};ext=1\r\n", inner.len()).as_bytes(),
            &inner[..],
            &b"\r\n0\r\nx-trailer: 1\r\n\r\n"[..],
        ]
        .concat();
        let then = b"POST /c HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(marked(&[&by_length[..], &then[..]].concat()), vec![1]);
        assert_eq!(marked(&[&chunked[..], &then[..]].concat()), vec![1]);
        // Empty lines between requests are not heads.
        assert_eq!(marked(&[&b"\r\n\r\n"[..], &then[..]].concat()), vec![0]);
    }

    #[test]
    fn what_the_guard_cannot_follow_makes_it_step_aside() {
        let then = b"POST /c HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        for first in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        ] {
            let mut scanner = Scanner::default();
            let framing = Framing::default();
            scanner.feed(first, &framing);
            scanner.feed(then, &framing);
            assert!(scanner.is_off(), "{:?}", String::from_utf8_lossy(first));
            assert!(!framing.framed_twice(1));
        }
    }

    #[test]
    fn a_head_has_begun_from_its_first_byte_until_its_empty_line() {
        let mut scanner = Scanner::default();
        let framing = Framing::default();
        assert!(!scanner.head_begun());
        scanner.feed(b"\r\n", &framing);
        assert!(!scanner.head_begun(), "empty lines are not a head");
        scanner.feed(b"GET / HTTP/1.1\r\nHo", &framing);
        assert!(scanner.head_begun());
        scanner.feed(b"st: x\r\n\r\n", &framing);
        assert!(!scanner.head_begun());
    }
}
