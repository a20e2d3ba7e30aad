//! The HTTP/2 body of a subscription's responses: gRPC messages, then the status trailers.
//!
//! Written by hand rather than with tonic's encoder because tonic copies every response into
//! a buffer of its own. Here single responses are still gathered into one buffer (a write per
//! response would cost a system call each), but a [`Frame::Encoded`] run of shared bytes
//! large enough to be worth its own write goes out as it is: the same bytes, by reference, in
//! every subscriber's stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame as HttpFrame;
use tonic::Status;

use super::frame::{Frame, MESSAGE_PREFIX};
use super::subscriber::ResponseStream;

/// Shared bytes shorter than this are copied into the buffer with the responses around them:
/// a write of their own would cost more than the copy.
const COPY_BELOW: usize = 4 * 1024;
/// The buffer is handed to HTTP/2 once it holds this much (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;
/// The first capacity of the buffer for a single response: an idle stream's buffer stays
/// small. A burst makes room for a whole write at once.
const FIRST_BYTES: usize = 1024;

/// A subscription's responses as an HTTP/2 body.
pub(super) struct FrameBody {
    frames: ResponseStream,
    /// Responses gathered for the next write.
    buf: BytesMut,
    /// Shared bytes to write after `buf`.
    shared: Option<Bytes>,
    /// How the stream ended, once it has (sent as trailers after the data).
    end: Option<Status>,
    /// The trailers were sent.
    done: bool,
}

impl FrameBody {
    pub(super) fn new(frames: ResponseStream) -> FrameBody {
        FrameBody {
            frames,
            buf: BytesMut::new(),
            shared: None,
            end: None,
            done: false,
        }
    }

    /// Appends `frame` to the buffer as a gRPC message, or returns its shared bytes when they
    /// are worth a write of their own.
    fn gather(&mut self, frame: Frame) -> Result<Option<Bytes>, Status> {
        let Some(len) = frame.message_len() else {
            let Frame::Encoded(bytes) = frame else {
                unreachable!("only shared bytes have no message length")
            };
            if bytes.len() >= COPY_BELOW {
                return Ok(Some(bytes));
            }
            self.reserve(bytes.len(), false);
            self.buf.put_slice(&bytes);
            return Ok(None);
        };
        let prefix = u32::try_from(len)
            .map_err(|_| Status::internal("a response is larger than gRPC allows (4 GiB)"))?;
        self.reserve(MESSAGE_PREFIX + len, frame.more());
        self.buf.put_u8(0);
        self.buf.put_u32(prefix);
        frame.encode(&mut self.buf);
        Ok(None)
    }

    /// Makes room for `len` more bytes: for a whole write at once in a burst, instead of
    /// growing from a small buffer by doubling (a copy per step).
    fn reserve(&mut self, len: usize, burst: bool) {
        if self.buf.capacity() - self.buf.len() < len {
            let first = if burst { YIELD_BYTES } else { FIRST_BYTES };
            self.buf.reserve(len.max(first));
        }
    }

    fn data(bytes: Bytes) -> Poll<Option<Result<HttpFrame<Bytes>, Status>>> {
        Poll::Ready(Some(Ok(HttpFrame::data(bytes))))
    }
}

impl http_body::Body for FrameBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<HttpFrame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.shared.take() {
                return Self::data(bytes);
            }
            if let Some(status) = this.end.take() {
                if !this.buf.is_empty() {
                    this.end = Some(status);
                    return Self::data(this.buf.split().freeze());
                }
                this.done = true;
                let mut trailers = http::HeaderMap::new();
                return Poll::Ready(Some(
                    status
                        .add_header(&mut trailers)
                        .map(|()| HttpFrame::trailers(trailers)),
                ));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => match this.gather(frame) {
                    Ok(Some(shared)) if this.buf.is_empty() => return Self::data(shared),
                    Ok(Some(shared)) => {
                        this.shared = Some(shared);
                        return Self::data(this.buf.split().freeze());
                    }
                    Ok(None) if this.buf.len() >= YIELD_BYTES => {
                        return Self::data(this.buf.split().freeze());
                    }
                    Ok(None) => {}
                    Err(status) => this.end = Some(status),
                },
                Poll::Ready(Some(Err(status))) => this.end = Some(status),
                Poll::Ready(None) => this.end = Some(Status::ok("")),
                Poll::Pending if this.buf.is_empty() => return Poll::Pending,
                // Nothing more is ready: write what is gathered.
                Poll::Pending => return Self::data(this.buf.split().freeze()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
