//! Large bodies without large allocations: a fixed byte pattern generated chunk by chunk
//! (`byte[i] = i % 251`), a body that streams it, and a checker that verifies a stream of
//! chunks against it by position, so a 100 MB transfer is generated and checked on the fly.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};

/// Chunk size of [`PatternBody`]: 64 KiB.
pub const CHUNK: usize = 64 * 1024;

/// A prime period, so the pattern never lines up with chunk or frame boundaries and a
/// reordered, duplicated or dropped chunk is always caught.
const PERIOD: usize = 251;

/// `CHUNK + PERIOD` bytes of pattern: any chunk at any offset is a slice of it.
static PATTERN: LazyLock<Bytes> = LazyLock::new(|| {
    (0..CHUNK + PERIOD)
        .map(|i| (i % PERIOD) as u8)
        .collect::<Vec<u8>>()
        .into()
});

/// The pattern's bytes `offset..offset + len`; `len` at most [`CHUNK`].
pub fn chunk_at(offset: u64, len: usize) -> Bytes {
    assert!(len <= CHUNK, "pattern chunks are at most {CHUNK} bytes");
    let start = (offset % PERIOD as u64) as usize;
    PATTERN.slice(start..start + len)
}

/// A body of `len` pattern bytes in [`CHUNK`]-sized frames.
#[derive(Debug, Clone)]
pub struct PatternBody {
    offset: u64,
    len: u64,
    /// When set the body hides its length, so HTTP/1.1 sends it with chunked encoding.
    chunked: bool,
}

impl PatternBody {
    /// A body whose length is known (HTTP/1.1: `content-length`).
    pub fn sized(len: u64) -> Self {
        PatternBody {
            offset: 0,
            len,
            chunked: false,
        }
    }

    /// A body whose length is not announced (HTTP/1.1: `transfer-encoding: chunked`).
    pub fn chunked(len: u64) -> Self {
        PatternBody {
            offset: 0,
            len,
            chunked: true,
        }
    }

    pub fn boxed(self) -> Body {
        http_body_util::BodyExt::boxed_unsync(self)
    }
}

impl HttpBody for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let left = self.len - self.offset;
        if left == 0 {
            return Poll::Ready(None);
        }
        let n = left.min(CHUNK as u64) as usize;
        let data = chunk_at(self.offset, n);
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        // A chunked body must not admit to being empty either, or hyper picks a length.
        !self.chunked && self.offset == self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunked {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.len - self.offset)
        }
    }
}

/// Checks a stream of chunks against the pattern by position.
#[derive(Debug, Clone, Default)]
pub struct PatternCheck {
    len: u64,
    /// Offset of the first byte that differs from the pattern.
    first_mismatch: Option<u64>,
}

impl PatternCheck {
    pub fn new() -> Self {
        PatternCheck::default()
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(CHUNK);
            if self.first_mismatch.is_none() && data[..n] != chunk_at(self.len, n)[..] {
                let expected = chunk_at(self.len, n);
                let at = data[..n]
                    .iter()
                    .zip(expected.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                self.first_mismatch = Some(self.len + at as u64);
            }
            self.len += n as u64;
            data = &data[n..];
        }
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `None` when every byte fed matched the pattern.
    pub fn first_mismatch(&self) -> Option<u64> {
        self.first_mismatch
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn body_and_check_agree_across_chunk_boundaries() {
        let mut body = PatternBody::sized(3 * CHUNK as u64 + 17);
        let mut check = PatternCheck::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let data = frame
                .expect("pattern frames never fail")
                .into_data()
                .expect("data");
            check.feed(&data);
            frames += 1;
        }
        assert_eq!(frames, 4);
        assert_eq!(check.len(), 3 * CHUNK as u64 + 17);
        assert_eq!(check.first_mismatch(), None);
    }

    #[test]
    fn check_finds_the_first_wrong_byte() {
        let mut check = PatternCheck::new();
        check.feed(&chunk_at(0, 1000));
        let mut bad = chunk_at(1000, 100).to_vec();
        bad[42] ^= 0xff;
        check.feed(&bad);
        assert_eq!(check.first_mismatch(), Some(1042));
    }
}
