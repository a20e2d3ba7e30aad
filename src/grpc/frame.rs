//! Subscription responses encoded once per event, not once per subscriber.
//!
//! A stored event's `Delivery` is the same for every subscriber except `delivery_count`. So
//! its protobuf encoding without that field (fields 1, 2, 3 and 5 of `Delivery`) is made once,
//! on its first delivery, and kept with the event ([`StoredEvent::wire`]); each delivery is then
//! a few header bytes, a copy of those shared bytes and the count. Protobuf readers accept
//! fields in any order, so the bytes on the wire decode to exactly the `SubscribeResponse` the
//! generated code would have written: clients cannot tell the difference.
//!
//! In a fan-out, whole runs are shared too: the shared reader hands the events of each read
//! (a block of consecutive events of its history) to [`encode_block`] before any subscriber
//! can see them, which writes the first-delivery responses of all of them end to end, framed
//! as gRPC messages ([`Segment`]). A subscriber whose run holds consecutive events of a
//! segment sends that slice of it as it is ([`Frame::Encoded`]): the same bytes, by
//! reference, to every subscriber.
//!
//! tonic's generated server fixes a method's response type to the message type and encodes
//! each response into a buffer of its own (a copy of every delivery). So the `Subscriber`
//! service is served by [`SubscriberServer`] below, in the generated code's shape for the
//! request side, and its responses are written by [`super::body::FrameBody`].

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use parking_lot::Mutex;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, ServerStreamingService, StreamingService};
use tonic::Status;

use super::body::FrameBody;
use super::convert::item_to_pb;
use super::pb::jetwatch::v1 as api;
use super::subscriber::{ResponseStream, SubscriberService};
use crate::engine::{Item, Segment, StoredEvent};

/// `SubscribeResponse.delivery`.
const RESPONSE_DELIVERY: u32 = 2;
/// `Delivery.delivery_count`.
const DELIVERY_COUNT: u32 = 4;
/// The prefix of every gRPC message: a compression flag and the length.
pub(super) const MESSAGE_PREFIX: usize = 5;
/// Most bytes of responses one [`Segment`] holds: a block of large events is cut into several.
const SEGMENT_BYTES: usize = 256 * 1024;

/// One response of a subscription stream, ready for the wire.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A delivery: the event's shared encoding plus this delivery's count.
    Delivery {
        /// The event, whose `Delivery` encoding without `delivery_count` is shared by every
        /// subscriber (borrowed when written: no reference count per delivery on the bytes).
        event: Arc<StoredEvent>,
        /// 1 on first delivery.
        delivery_count: u32,
        /// More frames of the same run follow at once (a burst is being written).
        more: bool,
    },
    /// First deliveries of consecutive events, already framed as gRPC messages: a slice of a
    /// [`Segment`], sent as it is.
    Encoded(Bytes),
    /// Any other response (rare: opened, bookmarks, snapshot end), encoded as usual.
    Message(Box<api::SubscribeResponse>),
}

impl Frame {
    /// The frame of an engine item.
    pub fn of(item: &Item) -> Frame {
        match item {
            Item::Delivery {
                event,
                delivery_count,
            } => Frame::Delivery {
                event: event.clone(),
                delivery_count: *delivery_count,
                more: false,
            },
            other => Frame::Message(Box::new(item_to_pb(other))),
        }
    }

    /// The first delivery of `event`; `more` when other frames of its run follow at once.
    pub fn first_delivery(event: Arc<StoredEvent>, more: bool) -> Frame {
        Frame::Delivery {
            event,
            delivery_count: 1,
            more,
        }
    }

    /// The first deliveries of the longest prefix of `run` (events in sequence order) that is
    /// a stretch of consecutive events of one [`Segment`], and how many events that is; `None`
    /// when `run` does not start with such a stretch of at least two events.
    pub fn shared_run(run: &[Arc<StoredEvent>]) -> Option<(Frame, usize)> {
        let (segment, first) = run.first()?.segment.get()?;
        let n = 1 + run[1..]
            .iter()
            .zip(first + 1..)
            .take_while(|(e, i)| {
                e.segment
                    .get()
                    .is_some_and(|(s, at)| Arc::ptr_eq(s, segment) && at == i)
            })
            .count();
        // A stretch of consecutive places in the segment is every event the history holds
        // between them: exactly the responses the run would have sent one by one.
        (n >= 2).then(|| (Frame::Encoded(segment.responses(*first, first + n)), n))
    }

    /// The length of the `SubscribeResponse` (without the gRPC prefix); `None` for
    /// [`Frame::Encoded`].
    pub(super) fn message_len(&self) -> Option<usize> {
        match self {
            Frame::Delivery {
                event,
                delivery_count,
                ..
            } => {
                let inner = delivery_len(delivery_body(event).len(), *delivery_count);
                Some(1 + encoded_len_varint(inner as u64) + inner)
            }
            Frame::Encoded(_) => None,
            Frame::Message(m) => Some(m.encoded_len()),
        }
    }

    /// Whether more frames of the same run follow at once.
    pub(super) fn more(&self) -> bool {
        matches!(self, Frame::Delivery { more: true, .. })
    }

    /// Writes the `SubscribeResponse` encoding (nothing for [`Frame::Encoded`], which is
    /// framed already).
    pub(super) fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Frame::Delivery {
                event,
                delivery_count,
                ..
            } => put_delivery(delivery_body(event), *delivery_count, dst),
            Frame::Encoded(_) => {}
            // Cannot fail: the caller made room for `message_len` bytes.
            Frame::Message(m) => m.encode_raw(dst),
        }
    }
}

/// Writes a `SubscribeResponse` carrying a `Delivery` made of the shared `body` and the count.
fn put_delivery(body: &[u8], delivery_count: u32, dst: &mut impl BufMut) {
    let count = u64::from(delivery_count);
    let inner = delivery_len(body.len(), delivery_count);
    encode_key(RESPONSE_DELIVERY, WireType::LengthDelimited, dst);
    encode_varint(inner as u64, dst);
    dst.put_slice(body);
    if count != 0 {
        encode_key(DELIVERY_COUNT, WireType::Varint, dst);
        encode_varint(count, dst);
    }
}

/// The length of a `Delivery` made of a shared body of `body` bytes and `delivery_count` (0 is
/// not written, as protobuf leaves out default values).
fn delivery_len(body: usize, delivery_count: u32) -> usize {
    let count_len = match delivery_count {
        0 => 0,
        n => 1 + encoded_len_varint(u64::from(n)),
    };
    body + count_len
}

/// The event's `Delivery` encoding without `delivery_count`, made on first use and shared.
pub fn delivery_body(event: &StoredEvent) -> &Bytes {
    event
        .wire
        .get_or_init(|| Bytes::from(super::delivery::encode(event)))
}

/// The [`crate::engine::BlockEncoder`] of gRPC: writes the first-delivery responses of a
/// block of consecutive events of the shared history end to end, each framed as a gRPC
/// message, in segments of at most `SEGMENT_BYTES` (one event more when a single one is
/// larger), and records each event's place. An event's own encoding becomes a slice of its segment, so the
/// block is held once.
pub fn encode_block(events: &[Arc<StoredEvent>]) {
    let mut rest = events;
    let mut measured = Vec::new();
    while !rest.is_empty() {
        // Measure the events of the segment first, so that its buffer is allocated once.
        measured.clear();
        let mut total = 0;
        for event in rest {
            let body = super::delivery::Measured::of(event);
            let inner = delivery_len(body.len, 1);
            let message = 1 + encoded_len_varint(inner as u64) + inner;
            if !measured.is_empty() && total + MESSAGE_PREFIX + message > SEGMENT_BYTES {
                break;
            }
            let Ok(prefix) = u32::try_from(message) else {
                // Larger than a gRPC message can be (4 GiB): never stored by a stream the
                // gateway accepts; left to the path of single deliveries, which refuses it.
                break;
            };
            total += MESSAGE_PREFIX + message;
            measured.push((body, inner, prefix));
        }
        if measured.is_empty() {
            return;
        }
        let mut bytes = Vec::with_capacity(total);
        let mut places = Vec::with_capacity(measured.len() + 1);
        let mut bodies = Vec::with_capacity(measured.len());
        for (body, inner, prefix) in &measured {
            places.push(bytes.len());
            bytes.push(0);
            bytes.put_u32(*prefix);
            encode_key(RESPONSE_DELIVERY, WireType::LengthDelimited, &mut bytes);
            encode_varint(*inner as u64, &mut bytes);
            let at = bytes.len();
            body.encode_into(&mut bytes);
            bodies.push(at..bytes.len());
            encode_key(DELIVERY_COUNT, WireType::Varint, &mut bytes);
            encode_varint(1, &mut bytes);
        }
        debug_assert_eq!(bytes.len(), total);
        let taken = measured.len();
        places.push(bytes.len());
        let bytes = Bytes::from(bytes);
        let segment = Arc::new(Segment {
            bytes: bytes.clone(),
            offsets: places.into_boxed_slice(),
        });
        for (i, (event, body)) in rest.iter().zip(bodies).enumerate() {
            // Already set only if a subscriber sent the event a moment ago: it keeps its own.
            let _ = event.wire.set(bytes.slice(body));
            let _ = event.segment.set((segment.clone(), i));
        }
        rest = &rest[taken..];
    }
}

/// A codec that reads requests of type `D` like prost. Responses never pass through it: they
/// are written by [`FrameBody`].
#[derive(Debug)]
pub struct RequestCodec<D>(PhantomData<D>);

impl<D> Default for RequestCodec<D> {
    fn default() -> Self {
        RequestCodec(PhantomData)
    }
}

impl<D: Message + Default + Send + 'static> Codec for RequestCodec<D> {
    type Encode = Infallible;
    type Decode = D;
    type Encoder = NoEncoder;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> NoEncoder {
        NoEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<D> {
        ProstDecoder(PhantomData)
    }
}

/// The encoder of a codec with nothing to encode.
#[derive(Debug)]
pub struct NoEncoder;

impl Encoder for NoEncoder {
    type Item = Infallible;
    type Error = Status;

    fn encode(&mut self, item: Infallible, _dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {}
    }
}

/// First capacity of a stream's request buffer. tonic's default is 8 KiB, allocated when a
/// stream opens: most of an idle Watch's memory.
const REQUEST_BUFFER_BYTES: usize = 1024;
/// Bytes tonic gathers before decoding (its default).
const REQUEST_YIELD_BYTES: usize = 32 * 1024;

/// Reads prost messages.
#[derive(Debug)]
pub struct ProstDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(REQUEST_BUFFER_BYTES, REQUEST_YIELD_BYTES)
    }

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(super::status::undecodable_request)
    }
}

/// The `jetwatch.v1.Subscriber` service, answering with [`Frame`]s.
#[derive(Debug, Clone)]
pub struct SubscriberServer {
    inner: Arc<SubscriberService>,
    max_request_bytes: usize,
}

impl SubscriberServer {
    /// Serves `service`, refusing request messages over `max_request_bytes`.
    pub fn new(service: SubscriberService, max_request_bytes: usize) -> SubscriberServer {
        SubscriberServer {
            inner: Arc::new(service),
            max_request_bytes,
        }
    }
}

impl NamedService for SubscriberServer {
    const NAME: &'static str = "jetwatch.v1.Subscriber";
}

/// Where a method leaves its response stream for [`FrameBody`]. tonic's `Grpc` reads and
/// decodes the request, calls the method and makes the response's headers (or the error
/// response); the method hands tonic an empty stream and leaves its own here, and the
/// response's body is then replaced by a [`FrameBody`] of it.
type Slot = Arc<Mutex<Option<ResponseStream>>>;

/// An empty stream of responses for tonic: the real ones are in the [`Slot`].
type Nothing = futures::stream::Empty<Result<Infallible, Status>>;

/// Leaves `response`'s stream in `slot`.
fn stash(
    response: Result<tonic::Response<ResponseStream>, Status>,
    slot: &Slot,
) -> Result<tonic::Response<Nothing>, Status> {
    let (metadata, stream, extensions) = response?.into_parts();
    *slot.lock() = Some(stream);
    Ok(tonic::Response::from_parts(
        metadata,
        futures::stream::empty(),
        extensions,
    ))
}

/// `response` (as tonic made it) with the stream left in `slot` as its body.
fn with_body(
    response: http::Response<tonic::body::Body>,
    slot: &Slot,
) -> http::Response<tonic::body::Body> {
    match slot.lock().take() {
        Some(frames) => {
            let (parts, _) = response.into_parts();
            http::Response::from_parts(parts, tonic::body::Body::new(FrameBody::new(frames)))
        }
        // The method failed: tonic's error response.
        None => response,
    }
}

struct SubscribeMethod(Arc<SubscriberService>, Slot);

impl StreamingService<api::SubscribeRequest> for SubscribeMethod {
    type Response = Infallible;
    type ResponseStream = Nothing;
    type Future = BoxFuture<tonic::Response<Nothing>, Status>;

    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<api::SubscribeRequest>>,
    ) -> Self::Future {
        let (service, slot) = (self.0.clone(), self.1.clone());
        Box::pin(async move { stash(service.subscribe(request).await, &slot) })
    }
}

struct WatchMethod(Arc<SubscriberService>, Slot);

impl ServerStreamingService<api::Open> for WatchMethod {
    type Response = Infallible;
    type ResponseStream = Nothing;
    type Future = BoxFuture<tonic::Response<Nothing>, Status>;

    fn call(&mut self, request: tonic::Request<api::Open>) -> Self::Future {
        let (service, slot) = (self.0.clone(), self.1.clone());
        Box::pin(async move { stash(service.watch(request).await, &slot) })
    }
}

/// tonic's handling of a method's requests (decoding, at most `limit` bytes each).
fn requests<D: Message + Default + Send + 'static>(limit: usize) -> Grpc<RequestCodec<D>> {
    Grpc::new(RequestCodec::default()).max_decoding_message_size(limit)
}

impl<B> tonic::codegen::Service<http::Request<B>> for SubscriberServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let limit = self.max_request_bytes;
        let slot = Slot::default();
        match req.uri().path() {
            "/jetwatch.v1.Subscriber/Subscribe" => Box::pin(async move {
                let response = requests::<api::SubscribeRequest>(limit)
                    .streaming(SubscribeMethod(inner, slot.clone()), req)
                    .await;
                Ok(with_body(response, &slot))
            }),
            "/jetwatch.v1.Subscriber/Watch" => Box::pin(async move {
                let response = requests::<api::Open>(limit)
                    .server_streaming(WatchMethod(inner, slot.clone()), req)
                    .await;
                Ok(with_body(response, &slot))
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn stored() -> Arc<StoredEvent> {
        let mut event = Event {
            id: "e1".into(),
            source: "/widgets".into(),
            spec_version: "1.0".into(),
            ty: "com.example.widget.modified".into(),
            ..Event::default()
        };
        event.data = Some(crate::event::Data::Text("{\"n\":1}".into()));
        stored_at(300, "events._widgets.w1".into(), event)
    }

    /// `event` stored at `sequence` on `subject`, not yet encoded.
    fn stored_at(sequence: u64, subject: String, event: Event) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            sequence,
            subject,
            stored_at: chrono::Utc::now(),
            event,
            size: 0,
            wire: Default::default(),
            json: Default::default(),
            segment: Default::default(),
        })
    }

    /// The gRPC messages in `bytes` (each behind its 5-byte prefix), decoded.
    fn messages(mut bytes: &[u8]) -> Vec<api::SubscribeResponse> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0, "not compressed");
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
            out.push(api::SubscribeResponse::decode(&bytes[5..5 + len]).unwrap());
            bytes = &bytes[5 + len..];
        }
        out
    }

    fn delivery(event: &Arc<StoredEvent>) -> api::SubscribeResponse {
        item_to_pb(&Item::Delivery {
            event: event.clone(),
            delivery_count: 1,
        })
    }

    #[test]
    fn a_delivery_frame_decodes_to_the_message_the_generated_code_writes() {
        let event = stored();
        for delivery_count in [0, 1, 2, 300, u32::MAX] {
            let item = Item::Delivery {
                event: event.clone(),
                delivery_count,
            };
            let mut bytes = Vec::new();
            let frame = Frame::of(&item);
            frame.encode(&mut bytes);
            assert_eq!(frame.message_len(), Some(bytes.len()));
            let decoded = api::SubscribeResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(
                decoded,
                item_to_pb(&item),
                "delivery_count {delivery_count}"
            );
            if delivery_count == 1 {
                let mut burst = Vec::new();
                let frame = Frame::first_delivery(event.clone(), true);
                frame.encode(&mut burst);
                assert_eq!(burst, bytes, "a frame of a run is the same bytes");
                assert!(frame.more());
            }
        }
    }

    #[test]
    fn other_responses_are_encoded_as_messages() {
        let item = Item::Bookmark {
            sequence: 7,
            pending: 3,
        };
        let mut bytes = Vec::new();
        let frame = Frame::of(&item);
        frame.encode(&mut bytes);
        assert_eq!(frame.message_len(), Some(bytes.len()));
        assert_eq!(
            api::SubscribeResponse::decode(bytes.as_slice()).unwrap(),
            item_to_pb(&item)
        );
    }

    fn numbered(sequence: u64, data_bytes: usize) -> Arc<StoredEvent> {
        let mut event = stored().event.clone();
        event.id = format!("e{sequence}");
        event.data = Some(crate::event::Data::Binary(vec![7; data_bytes].into()));
        stored_at(sequence, format!("events._widgets.w{sequence}"), event)
    }

    #[test]
    fn a_shared_run_is_the_responses_of_its_events_one_by_one() {
        let block: Vec<_> = (1..=5).map(|s| numbered(s * 2, 10)).collect();
        encode_block(&block);
        // Each event's own encoding is a slice of the block's: the same bytes as made alone.
        for e in &block {
            assert_eq!(
                delivery_body(e).as_ref(),
                super::super::delivery::encode(e).as_slice()
            );
        }
        let (frame, n) = Frame::shared_run(&block).unwrap();
        assert_eq!(n, 5);
        let Frame::Encoded(bytes) = frame else {
            panic!("not shared bytes")
        };
        let expected: Vec<_> = block.iter().map(delivery).collect();
        assert_eq!(messages(&bytes), expected);
        // A run from the middle of the block.
        let (frame, n) = Frame::shared_run(&block[1..4]).unwrap();
        assert_eq!(n, 3);
        let Frame::Encoded(bytes) = frame else {
            panic!("not shared bytes")
        };
        assert_eq!(messages(&bytes), expected[1..4]);
    }

    #[test]
    fn a_shared_run_stops_where_the_run_leaves_out_an_event_of_the_block() {
        let block: Vec<_> = (1..=4).map(|s| numbered(s, 10)).collect();
        encode_block(&block);
        // A filtered run: 1, 2, then 4 (3 did not match).
        let run = [block[0].clone(), block[1].clone(), block[3].clone()];
        let (_, n) = Frame::shared_run(&run).unwrap();
        assert_eq!(n, 2);
        assert!(Frame::shared_run(&run[2..]).is_none(), "a single event");
        // Events of another block, or of none, are never joined.
        let other: Vec<_> = (5..=6).map(|s| numbered(s, 10)).collect();
        encode_block(&other);
        assert_eq!(
            Frame::shared_run(&[block[3].clone(), other[0].clone()]).map(|r| r.1),
            None
        );
        assert!(Frame::shared_run(&[numbered(9, 1), numbered(10, 1)]).is_none());
    }

    #[test]
    fn a_block_of_large_events_is_cut_into_segments_of_bounded_size() {
        let block: Vec<_> = (1..=5).map(|s| numbered(s, 100 * 1024)).collect();
        encode_block(&block);
        let mut at = 0;
        let mut segments = 0;
        while at < block.len() {
            let (frame, n) = Frame::shared_run(&block[at..])
                .map(|(f, n)| (Some(f), n))
                .unwrap_or((None, 1));
            if let Some(Frame::Encoded(bytes)) = frame {
                assert!(bytes.len() <= SEGMENT_BYTES, "{} bytes", bytes.len());
                assert_eq!(
                    messages(&bytes),
                    block[at..at + n].iter().map(delivery).collect::<Vec<_>>()
                );
            }
            let (segment, place) = block[at].segment.get().unwrap();
            assert_eq!(*place, 0, "a run starts a segment");
            assert_eq!(segment.offsets.len(), n + 1);
            at += n;
            segments += 1;
        }
        assert_eq!(segments, 3, "two events of 100 KiB per segment of 256 KiB");
    }

    /// The body of `frames` as a client reads it: its messages and its trailers.
    async fn read_body(
        frames: Vec<Result<Frame, Status>>,
    ) -> (Vec<api::SubscribeResponse>, http::HeaderMap) {
        use http_body_util::BodyExt;
        let body = FrameBody::new(Box::pin(futures::stream::iter(frames)));
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        (messages(&collected.to_bytes()), trailers)
    }

    #[tokio::test]
    async fn the_body_writes_every_response_in_order_then_the_status() {
        let large: Vec<_> = (1..=3).map(|s| numbered(s, 8 * 1024)).collect();
        let small: Vec<_> = (4..=5).map(|s| numbered(s, 10)).collect();
        encode_block(&large);
        encode_block(&small);
        let bookmark = Item::Bookmark {
            sequence: 9,
            pending: 0,
        };
        let (shared_large, _) = Frame::shared_run(&large).unwrap();
        let (shared_small, _) = Frame::shared_run(&small).unwrap();
        let frames = vec![
            Ok(Frame::of(&bookmark)),
            Ok(Frame::first_delivery(small[0].clone(), true)),
            // Shared bytes large enough for a write of their own, between buffered responses.
            Ok(shared_large),
            Ok(Frame::first_delivery(small[1].clone(), false)),
            // Small shared bytes, copied into the buffer.
            Ok(shared_small),
            Err(Status::unavailable("the gateway is shutting down")),
        ];
        let (got, trailers) = read_body(frames).await;
        let mut expected = vec![item_to_pb(&bookmark), delivery(&small[0])];
        expected.extend(large.iter().map(delivery));
        expected.push(delivery(&small[1]));
        expected.extend(small.iter().map(delivery));
        assert_eq!(got, expected);
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(
            trailers["grpc-message"],
            "the%20gateway%20is%20shutting%20down"
        );

        let (got, trailers) = read_body(vec![Ok(Frame::of(&bookmark))]).await;
        assert_eq!(got, [item_to_pb(&bookmark)]);
        assert_eq!(trailers["grpc-status"], "0", "a stream that ends ends OK");
    }

    #[tokio::test]
    async fn a_burst_larger_than_a_write_arrives_whole_and_in_order() {
        // Sizes that do not divide a write evenly, single and in runs: responses that do not
        // fit in a write's buffer go in the next one.
        let events: Vec<_> = (1..=300)
            .map(|s| numbered(s, 100 + (s as usize * 37) % 3000))
            .collect();
        let frames = events
            .iter()
            .enumerate()
            .map(|(i, e)| Ok(Frame::first_delivery(e.clone(), i % 7 != 0)))
            .collect();
        let (got, trailers) = read_body(frames).await;
        assert_eq!(got, events.iter().map(delivery).collect::<Vec<_>>());
        assert_eq!(trailers["grpc-status"], "0");
    }
}
