//! HTTP/1.1 by hand over TCP, for what a well-behaved client cannot do: `Expect:
//! 100-continue` step by step, malformed request lines, oversized headers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one read may wait before the test fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A response head as received.
#[derive(Debug, Clone)]
pub struct RawHead {
    /// The status line, e.g. `HTTP/1.1 100 Continue`.
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl RawHead {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One TCP connection speaking HTTP/1.1 by hand.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read past the last head or body.
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes bytes; `false` when the peer has already closed the connection.
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Reads more bytes into the buffer; `false` at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no bytes from the server within {READ_TIMEOUT:?}"),
        }
    }

    /// The next response head; `None` when the server closed the connection first.
    pub async fn read_head(&mut self) -> Option<RawHead> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                return None;
            }
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        Some(RawHead {
            status_line,
            status,
            headers,
        })
    }

    /// The body that follows `head` (content-length or chunked framing). For responses that
    /// have no body (HEAD, 1xx, 204, 304) do not call this.
    pub async fn read_body(&mut self, head: &RawHead) -> Vec<u8> {
        if head
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            return self.read_chunked().await;
        }
        if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().expect("numeric content-length");
            return self.read_exact(len).await;
        }
        // Neither: the body runs to the end of the connection.
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    async fn read_exact(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed inside a body");
        }
        self.buf.drain(..len).collect()
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "connection closed inside a chunked body");
        }
    }

    async fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size_line = self.read_line().await;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
            if size == 0 {
                // Trailers, if any, up to the empty line.
                while !self.read_line().await.is_empty() {}
                return body;
            }
            body.extend(self.read_exact(size).await);
            let crlf = self.read_exact(2).await;
            assert_eq!(crlf, b"\r\n", "chunk not followed by CRLF");
        }
    }

    /// Whether the server closes the connection (EOF or reset) without sending anything more.
    pub async fn closed_by_peer(&mut self) -> bool {
        !self.fill().await
    }
}
