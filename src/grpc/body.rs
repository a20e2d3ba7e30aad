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

/// Shared bytes shorter than this are copied into the buffer with the responses around them,
/// and a buffer holding less than this grows rather than being written early: a write of
/// their own would cost more than the copy.
const COPY_BELOW: usize = 4 * 1024;
/// The buffer is handed to HTTP/2 once it holds this much (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;
/// The first capacity of the buffer for a single response: an idle stream's buffer stays
/// small. A burst makes room for a whole write at once.
const FIRST_BYTES: usize = 1024;

/// What became of a frame offered to the buffer.
enum Gathered {
    /// Appended to the buffer.
    Added,
    /// Shared bytes to write by themselves, after the buffer.
    Shared(Bytes),
    /// No room: the buffer is to be written first (the frame is kept for the next write).
    Full,
}

/// A subscription's responses as an HTTP/2 body.
pub(super) struct FrameBody {
    frames: ResponseStream,
    /// Responses gathered for the next write.
    buf: BytesMut,
    /// A frame taken from the stream that did not fit in the buffer: gathered first next time.
    pending: Option<Frame>,
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
            pending: None,
            shared: None,
            end: None,
            done: false,
        }
    }

    /// Appends `frame` to the buffer as a gRPC message, or says what to write first.
    fn gather(&mut self, frame: Frame) -> Result<Gathered, Status> {
        let Some(len) = frame.message_len() else {
            let Frame::Encoded(bytes) = frame else {
                unreachable!("only shared bytes have no message length")
            };
            if bytes.len() >= COPY_BELOW {
                return Ok(Gathered::Shared(bytes));
            }
            if !self.room(bytes.len(), false) {
                self.pending = Some(Frame::Encoded(bytes));
                return Ok(Gathered::Full);
            }
            self.buf.put_slice(&bytes);
            return Ok(Gathered::Added);
        };
        let prefix = u32::try_from(len)
            .map_err(|_| Status::internal("a response is larger than gRPC allows (4 GiB)"))?;
        if !self.room(MESSAGE_PREFIX + len, frame.more()) {
            self.pending = Some(frame);
            return Ok(Gathered::Full);
        }
        self.buf.put_u8(0);
        self.buf.put_u32(prefix);
        frame.encode(&mut self.buf);
        Ok(Gathered::Added)
    }

    /// Makes room for `len` more bytes, or says the buffer must be written first: a buffer
    /// holding `COPY_BELOW` bytes or more is not grown (growing copies what it holds; a write
    /// costs less). Otherwise it gets room for a whole write at once in a burst, else for a
    /// small response or two.
    fn room(&mut self, len: usize, burst: bool) -> bool {
        if self.buf.capacity() - self.buf.len() >= len {
            return true;
        }
        if self.buf.len() >= COPY_BELOW {
            return false;
        }
        let first = if burst { YIELD_BYTES } else { FIRST_BYTES };
        self.buf.reserve(len.max(first));
        true
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
            let next = match this.pending.take() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None => this.frames.as_mut().poll_next(cx),
            };
            match next {
                Poll::Ready(Some(Ok(frame))) => match this.gather(frame) {
                    Ok(Gathered::Shared(shared)) if this.buf.is_empty() => {
                        return Self::data(shared)
                    }
                    Ok(Gathered::Shared(shared)) => {
                        this.shared = Some(shared);
                        return Self::data(this.buf.split().freeze());
                    }
                    Ok(Gathered::Full) => return Self::data(this.buf.split().freeze()),
                    Ok(Gathered::Added) if this.buf.len() >= YIELD_BYTES => {
                        return Self::data(this.buf.split().freeze());
                    }
                    Ok(Gathered::Added) => {}
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
