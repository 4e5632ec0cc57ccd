//! The one body type the proxy sends upstream and answers clients with: streamed bodies pass
//! through without copying; small bodies are recorded on the way when a replay may need them.

use crate::balance::InFlight;
use crate::codec::RawHeaders;
use crate::conn::ClientBody;
use crate::upstream::{BackendBody, Tunnel};
use bytes::{Bytes, BytesMut};
use http::Response;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

/// The error of a body stream (the client or the backend went away, or broke the framing).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body read from a connection: an HTTP/1.1 client's request body or backend's response
/// body (both read by the gateway's own HTTP/1.1 code), or an HTTP/2 stream (hyper's).
pub(crate) enum Source {
    Client(ClientBody),
    // Boxed: a request's and a response's types hold a `Source`, and are moved from one
    // `async fn` to the next several times per request; inline, this took 136 bytes.
    Backend(Box<BackendBody>),
    H2(Box<Incoming>),
}

impl Source {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Source::Client(b) => b.poll_frame(cx),
            Source::Backend(b) => b.poll_frame(cx),
            Source::H2(b) => Pin::new(&mut **b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Client(b) => b.is_end_stream(),
            Source::Backend(b) => b.is_end_stream(),
            Source::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Client(b) => b.size_hint(),
            Source::Backend(b) => b.size_hint(),
            Source::H2(b) => b.size_hint(),
        }
    }
}

/// A response body that may hold its response's headers as the backend sent them
/// ([`RawHeaders`]): the h1 path writes those to the client as they are; everything else that
/// reads or changes a response's headers calls [`materialize`] first.
pub(crate) trait RawHead {
    fn take_raw(&mut self) -> Option<RawHeaders>;
}

impl RawHead for Source {
    fn take_raw(&mut self) -> Option<RawHeaders> {
        match self {
            Source::Backend(b) => b.take_raw(),
            _ => None,
        }
    }
}

impl RawHead for ProxyBody {
    fn take_raw(&mut self) -> Option<RawHeaders> {
        match self {
            ProxyBody::Upstream { body, .. } => body.take_raw(),
            _ => None,
        }
    }
}

/// Moves headers still kept raw in the body into the response's map, before those the
/// gateway added (a sticky cookie, a cache tag).
pub(crate) fn materialize<B: RawHead>(resp: &mut Response<B>) {
    let Some(raw) = resp.body_mut().take_raw() else {
        return;
    };
    let added = std::mem::replace(resp.headers_mut(), raw.into_map(2));
    let headers = resp.headers_mut();
    let mut last = None;
    for (name, value) in added {
        if let Some(name) = name {
            last = Some(name);
        }
        if let Some(name) = &last {
            headers.append(name, value);
        }
    }
}

/// A request or response body as the proxy carries it.
pub(crate) enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// A client's request body, streamed upstream.
    Stream(Source),
    /// A client's request body, streamed upstream while a copy is kept for a replay.
    Recorded(Source, Arc<Recorder>),
    /// A backend's response body; the guard counts the request as in flight until it is done.
    Upstream {
        body: Source,
        _in_flight: Option<InFlight>,
    },
    /// The answer to an HTTP/1.1 upgrade (`101`): no body; the client connection is joined to
    /// this backend connection once the head is written.
    Tunnel(Box<Tunnel>),
    /// A request body cut at a route's `max_body_bytes`: past it the stream fails and `over`
    /// is set, so the request is answered 413.
    Limited {
        inner: Box<ProxyBody>,
        left: u64,
        over: Arc<std::sync::atomic::AtomicBool>,
    },
    /// A response body the cache began to read (to share it) and found too large: the frames
    /// read so far, then the rest of the stream, or the error that cut it.
    Prefixed(Box<Prefixed>),
}

/// See [`ProxyBody::Prefixed`].
pub(crate) struct Prefixed {
    pub(crate) frames: std::collections::VecDeque<Frame<Bytes>>,
    pub(crate) rest: ProxyBody,
    pub(crate) error: Option<BoxError>,
}

impl ProxyBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            ProxyBody::Empty
        } else {
            ProxyBody::Full(Some(b))
        }
    }

    /// An HTTP/2 client's request body.
    pub(crate) fn incoming(b: Incoming) -> Self {
        ProxyBody::Stream(Source::H2(Box::new(b)))
    }

    /// Whether the whole body is here already (reading it will not wait).
    pub(crate) fn is_buffered(&self) -> bool {
        match self {
            ProxyBody::Empty | ProxyBody::Full(_) => true,
            ProxyBody::Stream(Source::Client(b)) | ProxyBody::Recorded(Source::Client(b), _) => {
                b.is_buffered()
            }
            _ => false,
        }
    }

    /// This body, failing once more than `max` bytes have come (a streamed body only: a body
    /// with a length was checked before it was sent).
    pub(crate) fn limited(self, max: u64, over: Arc<std::sync::atomic::AtomicBool>) -> Self {
        match self {
            b @ (ProxyBody::Stream(_) | ProxyBody::Recorded(..)) => ProxyBody::Limited {
                inner: Box::new(b),
                left: max,
                over,
            },
            other => other,
        }
    }

    /// This body with a copy kept in `rec` as it streams by.
    pub(crate) fn recorded(self, rec: Arc<Recorder>) -> Self {
        match self {
            ProxyBody::Stream(s) => ProxyBody::Recorded(s, rec),
            other => other,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Empty | ProxyBody::Tunnel(_) => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream(inner) | ProxyBody::Upstream { body: inner, .. } => {
                inner.poll_frame(cx)
            }
            ProxyBody::Limited { inner, left, over } => {
                let frame = ready!(Pin::new(inner.as_mut()).poll_frame(cx));
                if let Some(Ok(f)) = &frame
                    && let Some(data) = f.data_ref()
                {
                    let n = data.len() as u64;
                    if n > *left {
                        over.store(true, std::sync::atomic::Ordering::Release);
                        return Poll::Ready(Some(Err(
                            "the request body is larger than the route's max_body_bytes".into(),
                        )));
                    }
                    *left -= n;
                }
                Poll::Ready(frame)
            }
            ProxyBody::Prefixed(p) => {
                if let Some(f) = p.frames.pop_front() {
                    return Poll::Ready(Some(Ok(f)));
                }
                if let Some(e) = p.error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                Pin::new(&mut p.rest).poll_frame(cx)
            }
            ProxyBody::Recorded(inner, rec) => {
                let frame = ready!(inner.poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(data) = f.data_ref() {
                            rec.push(data);
                        }
                        if inner.is_end_stream() {
                            rec.finish();
                        }
                    }
                    Some(Err(_)) => rec.abandon(),
                    None => rec.finish(),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty | ProxyBody::Tunnel(_) => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Limited { inner, .. } => inner.is_end_stream(),
            ProxyBody::Prefixed(p) => {
                p.frames.is_empty() && p.error.is_none() && p.rest.is_end_stream()
            }
            ProxyBody::Stream(inner)
            | ProxyBody::Recorded(inner, _)
            | ProxyBody::Upstream { body: inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty | ProxyBody::Tunnel(_) => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Limited { inner, .. } => inner.size_hint(),
            ProxyBody::Prefixed(p) => {
                let ahead: u64 = p
                    .frames
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let rest = p.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + ahead);
                if let Some(u) = rest.upper() {
                    hint.set_upper(u + ahead);
                }
                hint
            }
            ProxyBody::Stream(inner)
            | ProxyBody::Recorded(inner, _)
            | ProxyBody::Upstream { body: inner, .. } => inner.size_hint(),
        }
    }
}

/// A copy of a request body as it streams upstream, kept while it stays within a limit.
pub(crate) struct Recorder {
    limit: usize,
    state: Mutex<Recording>,
}

#[derive(Default)]
struct Recording {
    chunks: Vec<Bytes>,
    len: usize,
    complete: bool,
    /// Over the limit or broken: the copy is useless.
    abandoned: bool,
}

impl Recorder {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Recorder {
            limit,
            state: Mutex::new(Recording::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, data: &Bytes) {
        let mut s = self.lock();
        if s.abandoned {
            return;
        }
        s.len += data.len();
        if s.len > self.limit {
            s.abandoned = true;
            s.chunks = Vec::new();
        } else {
            s.chunks.push(data.clone());
        }
    }

    fn finish(&self) {
        self.lock().complete = true;
    }

    fn abandon(&self) {
        let mut s = self.lock();
        s.abandoned = true;
        s.chunks = Vec::new();
    }

    /// The whole body, if it was received completely within the limit.
    pub(crate) fn take(&self) -> Option<Bytes> {
        let mut s = self.lock();
        if !s.complete || s.abandoned {
            return None;
        }
        let chunks = std::mem::take(&mut s.chunks);
        s.abandoned = true; // taken once
        Some(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(s.len);
                for c in chunks {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_small_complete_bodies_only() {
        let r = Recorder::new(8);
        r.push(&Bytes::from_static(b"abc"));
        assert_eq!(r.take(), None, "incomplete");
        r.push(&Bytes::from_static(b"def"));
        r.finish();
        assert_eq!(r.take().as_deref(), Some(&b"abcdef"[..]));
        assert_eq!(r.take(), None, "taken once");

        let r = Recorder::new(4);
        r.push(&Bytes::from_static(b"abc"));
        r.push(&Bytes::from_static(b"de"));
        r.finish();
        assert_eq!(r.take(), None, "over the limit");
    }

    /// Requests and responses are moved by value from one `async fn` to the next several times
    /// each; their bodies are kept to a few words so that each move stays small.
    #[test]
    fn bodies_stay_a_few_words() {
        use std::mem::size_of;
        assert_eq!(size_of::<Source>(), 16);
        assert!(size_of::<ProxyBody>() <= 48, "{}", size_of::<ProxyBody>());
    }
}
