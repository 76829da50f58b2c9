//! Request bodies that can be sent again. The first attempt streams the caller's body upstream
//! as it arrives while keeping a copy of what went by, up to `replayBufferBytes`; a retry (or a
//! failover attempt) replays the copy and then continues reading the caller's body where the
//! previous attempt stopped. A body that outgrows the cap is still forwarded, once: the copy is
//! dropped and later attempts are refused ([`ReplayBody::is_capped`]). Nothing is read ahead of
//! what the upstream asks for, so client streaming and backpressure work unchanged.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

struct Shared<B> {
    /// The caller's body, held by whichever attempt is reading it (taken while polled).
    source: Option<Box<B>>,
    /// Every data chunk read from the caller so far (empty once capped).
    chunks: Vec<Bytes>,
    buffered: u64,
    trailers: Option<HeaderMap>,
    /// The caller's body ended.
    complete: bool,
    /// More than the cap was read: the copy is gone and no further attempt may start.
    capped: bool,
    /// The caller's body failed; further attempts cannot be complete.
    failed: bool,
}

/// One attempt's view of a replayable request body.
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    cap: u64,
    /// Next buffered chunk this attempt has not sent yet.
    position: usize,
    /// Chunks this attempt replays before reading on (a snapshot of the copy at its start).
    replay: VecDeque<Bytes>,
    /// The source while this attempt is reading it.
    source: Option<Box<B>>,
    trailers_sent: bool,
    ended: bool,
    size_hint: SizeHint,
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayBody")
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin> ReplayBody<B> {
    /// Wraps the caller's body; `cap` is the policy's `replayBufferBytes`.
    pub fn new(body: B, cap: u64) -> ReplayBody<B> {
        let size_hint = body.size_hint();
        let complete = body.is_end_stream();
        // A body announced larger than the cap can never be replayed: do not copy any of it.
        let capped = size_hint.lower() > cap;
        let shared = Shared {
            source: Some(Box::new(body)),
            chunks: Vec::new(),
            buffered: 0,
            trailers: None,
            complete,
            capped,
            failed: false,
        };
        ReplayBody {
            shared: Arc::new(Mutex::new(shared)),
            cap,
            position: 0,
            replay: VecDeque::new(),
            source: None,
            trailers_sent: false,
            ended: complete,
            size_hint,
        }
    }

    /// A body for the next attempt, or `None` when the request cannot be sent again (its body
    /// outgrew the cap, or the caller's body failed).
    pub fn try_clone(&self) -> Option<ReplayBody<B>> {
        let shared = self.shared.lock().ok()?;
        if shared.capped || shared.failed {
            return None;
        }
        Some(ReplayBody {
            shared: self.shared.clone(),
            cap: self.cap,
            position: 0,
            replay: shared.chunks.iter().cloned().collect(),
            source: None,
            trailers_sent: false,
            ended: shared.complete && shared.chunks.is_empty() && shared.trailers.is_none(),
            size_hint: self.size_hint,
        })
    }

    /// Whether another attempt may still be made with this body.
    pub fn is_capped(&self) -> bool {
        self.shared
            .lock()
            .map(|s| s.capped || s.failed)
            .unwrap_or(true)
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        // Hand the caller's body back so the next attempt can continue reading it.
        if let Some(source) = self.source.take()
            && let Ok(mut shared) = self.shared.lock()
        {
            shared.source = Some(source);
        }
    }
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for ReplayBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // 1. What earlier attempts already read.
        if let Some(chunk) = this.replay.pop_front() {
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Ok(mut shared) = this.shared.lock() else {
            this.ended = true;
            return Poll::Ready(None);
        };
        if shared.complete {
            // The caller's body ended while an earlier attempt read it: send what this attempt
            // has not seen yet, then the trailers.
            if this.position < shared.chunks.len() {
                let chunk = shared.chunks[this.position].clone();
                this.position += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            this.ended = true;
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = shared.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        // 2. Read on from the caller.
        if this.source.is_none() {
            this.source = shared.source.take();
        }
        let Some(source) = this.source.as_mut() else {
            // Another live attempt holds the caller's body; this one cannot progress. Attempts
            // are sequential, so this only happens with a misuse: end the body.
            this.ended = true;
            return Poll::Ready(None);
        };
        drop(shared);
        let polled = Pin::new(&mut **source).poll_frame(cx);
        let Ok(mut shared) = this.shared.lock() else {
            return polled;
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !shared.capped {
                        shared.buffered += data.len() as u64;
                        if shared.buffered > this.cap {
                            shared.capped = true;
                            shared.chunks = Vec::new();
                        } else {
                            shared.chunks.push(data.clone());
                            this.position = shared.chunks.len();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    shared.trailers = Some(t.clone());
                    this.trailers_sent = true;
                }
                if this.source.as_ref().is_some_and(|s| s.is_end_stream()) {
                    shared.complete = true;
                }
            }
            Poll::Ready(None) => {
                shared.complete = true;
                this.ended = true;
            }
            Poll::Ready(Some(Err(_))) => {
                shared.failed = true;
                this.ended = true;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use std::convert::Infallible;

    use http_body_util::StreamBody;

    type Frames = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    /// A streamed body of `chunks` and optional trailers.
    fn stream(chunks: &[&'static str], trailers: bool) -> Frames {
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", http::HeaderValue::from_static("abc"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn collect<B>(body: ReplayBody<B>) -> (Vec<u8>, Option<HeaderMap>)
    where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Debug,
    {
        let collected = body.collect().await.expect("body reads");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_retry_replays_the_whole_body() {
        let first = ReplayBody::new(Body::full("hello world"), 1024);
        let second = first.try_clone().expect("replayable before reading");
        assert_eq!(collect(first).await.0, b"hello world");
        assert_eq!(collect(second).await.0, b"hello world");
    }

    #[tokio::test]
    async fn a_clone_made_after_the_first_attempt_replays_too() {
        let mut first = ReplayBody::new(Body::full("abc"), 1024);
        let frame = first.frame().await.expect("a frame").expect("no error");
        assert_eq!(frame.into_data().expect("data"), "abc");
        drop(first.frame().await);
        let second = first.try_clone().expect("still replayable");
        drop(first);
        assert_eq!(collect(second).await.0, b"abc");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_sent_once() {
        let first = ReplayBody::new(Body::full("0123456789"), 4);
        assert!(first.is_capped(), "announced size over the cap");
        assert!(first.try_clone().is_none());
        assert_eq!(collect(first).await.0, b"0123456789");
    }

    #[tokio::test]
    async fn streamed_chunks_and_trailers_replay_in_order() {
        let first = ReplayBody::new(stream(&["ab", "cd", "ef"], true), 1024);
        let (data, trailers) = collect(first.try_clone().expect("replayable")).await;
        assert_eq!(data, b"abcdef");
        assert_eq!(trailers.expect("trailers")["x-checksum"], "abc");
        let (data, trailers) = collect(first).await;
        assert_eq!(data, b"abcdef");
        assert_eq!(trailers.expect("trailers replayed")["x-checksum"], "abc");
    }

    #[tokio::test]
    async fn a_partly_read_body_continues_after_the_replay() {
        let mut first = ReplayBody::new(stream(&["ab", "cd", "ef"], false), 1024);
        let _ = first.frame().await;
        let second = first.try_clone().expect("replayable");
        drop(first);
        assert_eq!(collect(second).await.0, b"abcdef");
    }

    #[tokio::test]
    async fn a_stream_outgrowing_the_cap_is_forwarded_once() {
        let first = ReplayBody::new(stream(&["abc", "def", "ghi"], false), 5);
        assert!(!first.is_capped(), "size unknown up front");
        let probe = first.try_clone().expect("nothing read yet");
        drop(probe);
        assert_eq!(
            collect(first.try_clone().expect("still under the cap"))
                .await
                .0,
            b"abcdefghi"
        );
        assert!(first.is_capped());
        assert!(
            first.try_clone().is_none(),
            "no further attempt once capped"
        );
    }

    #[tokio::test]
    async fn empty_bodies_replay_as_empty() {
        let first = ReplayBody::new(Body::Empty, 16);
        let second = first.try_clone().expect("replayable");
        assert!(first.is_end_stream());
        assert_eq!(collect(second).await.0, b"");
    }
}
