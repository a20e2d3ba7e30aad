//! Subscription responses encoded once per event, not once per subscriber.
//!
//! A stored event's `Delivery` is the same for every subscriber except `delivery_count`. So
//! its protobuf encoding without that field (fields 1, 2, 3 and 5 of `Delivery`) is made once,
//! on its first delivery, and kept with the event ([`StoredEvent::wire`]); each delivery is then
//! a few header bytes, a copy of those shared bytes and the count. Protobuf readers accept
//! fields in any order, so the bytes on the wire decode to exactly the `SubscribeResponse` the
//! generated code would have written: clients cannot tell the difference.
//!
//! tonic's generated server fixes a method's response type to the message type and encodes
//! each response itself, so the `Subscriber` service is served by [`SubscriberServer`] below,
//! written in the generated code's shape with a codec whose encoder takes [`Frame`]s.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, ServerStreamingService, StreamingService};
use tonic::Status;

use super::convert::item_to_pb;
use super::pb::jetwatch::v1 as api;
use super::subscriber::{ResponseStream, SubscriberService};
use crate::engine::{Item, StoredEvent};

/// `SubscribeResponse.delivery`.
const RESPONSE_DELIVERY: u32 = 2;
/// `Delivery.delivery_count`.
const DELIVERY_COUNT: u32 = 4;

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

    /// The encoded length of a delivery frame that more frames follow at once.
    fn burst_len(&self) -> Option<usize> {
        match self {
            Frame::Delivery {
                event,
                delivery_count,
                more: true,
            } => {
                let inner = delivery_len(delivery_body(event), *delivery_count);
                Some(1 + encoded_len_varint(inner as u64) + inner)
            }
            _ => None,
        }
    }

    /// Writes the `SubscribeResponse` encoding.
    fn encode(&self, dst: &mut impl BufMut) -> Result<(), prost::EncodeError> {
        match self {
            Frame::Delivery {
                event,
                delivery_count,
                ..
            } => {
                let body = delivery_body(event);
                let count = u64::from(*delivery_count);
                let inner = delivery_len(body, *delivery_count);
                encode_key(RESPONSE_DELIVERY, WireType::LengthDelimited, dst);
                encode_varint(inner as u64, dst);
                dst.put_slice(body);
                if count != 0 {
                    encode_key(DELIVERY_COUNT, WireType::Varint, dst);
                    encode_varint(count, dst);
                }
                Ok(())
            }
            Frame::Message(m) => m.encode(dst),
        }
    }
}

/// The length of a `Delivery` made of the shared `body` and `delivery_count` (0 is not
/// written, as protobuf leaves out default values).
fn delivery_len(body: &Bytes, delivery_count: u32) -> usize {
    let count_len = match delivery_count {
        0 => 0,
        n => 1 + encoded_len_varint(u64::from(n)),
    };
    body.len() + count_len
}

/// The event's `Delivery` encoding without `delivery_count`, made on first use and shared.
pub fn delivery_body(event: &StoredEvent) -> &Bytes {
    event
        .wire
        .get_or_init(|| Bytes::from(super::delivery::encode(event)))
}

/// A codec that writes [`Frame`]s and reads requests of type `D` like prost.
#[derive(Debug)]
pub struct FrameCodec<D>(PhantomData<D>);

impl<D> Default for FrameCodec<D> {
    fn default() -> Self {
        FrameCodec(PhantomData)
    }
}

impl<D: Message + Default + Send + 'static> Codec for FrameCodec<D> {
    type Encode = Frame;
    type Decode = D;
    type Encoder = FrameEncoder;
    type Decoder = ProstDecoder<D>;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<D> {
        ProstDecoder(PhantomData)
    }
}

/// Writes frames.
#[derive(Debug)]
pub struct FrameEncoder;

/// First capacity of a stream's encode and decode buffers. tonic's default is 8 KiB per
/// buffer, allocated when a stream opens: most of an idle Watch's memory. Busy streams grow
/// their buffers as they write (up to the 32 KiB yield threshold per write).
const STREAM_BUFFER_BYTES: usize = 1024;
/// Bytes tonic gathers from ready frames before handing them to HTTP/2 (its default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl Encoder for FrameEncoder {
    type Item = Frame;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }

    fn encode(&mut self, item: Frame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if let Some(len) = item.burst_len() {
            // A burst: make room for a whole write at once, instead of growing the buffer
            // from its small first size by doubling (a copy per step). Only when the frame
            // does not fit; a trickle of single frames grows the buffer as it needs.
            if dst.chunk_mut().len() < len {
                dst.reserve(len.max(YIELD_THRESHOLD_BYTES));
            }
        }
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode a response: {e}")))
    }
}

/// Reads prost messages.
#[derive(Debug)]
pub struct ProstDecoder<D>(PhantomData<D>);

impl<D: Message + Default> Decoder for ProstDecoder<D> {
    type Item = D;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
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

struct SubscribeMethod(Arc<SubscriberService>);

impl StreamingService<api::SubscribeRequest> for SubscribeMethod {
    type Response = Frame;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<tonic::Response<ResponseStream>, Status>;

    fn call(
        &mut self,
        request: tonic::Request<tonic::Streaming<api::SubscribeRequest>>,
    ) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.subscribe(request).await })
    }
}

struct WatchMethod(Arc<SubscriberService>);

impl ServerStreamingService<api::Open> for WatchMethod {
    type Response = Frame;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<tonic::Response<ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<api::Open>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch(request).await })
    }
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
        match req.uri().path() {
            "/jetwatch.v1.Subscriber/Subscribe" => Box::pin(async move {
                let mut grpc = Grpc::new(FrameCodec::<api::SubscribeRequest>::default())
                    .max_decoding_message_size(limit);
                Ok(grpc.streaming(SubscribeMethod(inner), req).await)
            }),
            "/jetwatch.v1.Subscriber/Watch" => Box::pin(async move {
                let mut grpc =
                    Grpc::new(FrameCodec::<api::Open>::default()).max_decoding_message_size(limit);
                Ok(grpc.server_streaming(WatchMethod(inner), req).await)
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
        Arc::new(StoredEvent {
            sequence: 300,
            subject: "events._widgets.w1".into(),
            stored_at: chrono::Utc::now(),
            event,
            size: 0,
            wire: Default::default(),
            json: Default::default(),
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
            Frame::of(&item).encode(&mut bytes).unwrap();
            let decoded = api::SubscribeResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(
                decoded,
                item_to_pb(&item),
                "delivery_count {delivery_count}"
            );
            if delivery_count == 1 {
                let mut burst = Vec::new();
                let frame = Frame::first_delivery(event.clone(), true);
                frame.encode(&mut burst).unwrap();
                assert_eq!(burst, bytes, "a frame of a run is the same bytes");
                assert_eq!(frame.burst_len(), Some(bytes.len()));
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
        Frame::of(&item).encode(&mut bytes).unwrap();
        assert_eq!(
            api::SubscribeResponse::decode(bytes.as_slice()).unwrap(),
            item_to_pb(&item)
        );
    }
}
