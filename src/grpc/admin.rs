//! `jetwatch.v1.Admin`: streams and durable subscriptions.

use tonic::{Request, Response, Status};

use super::convert::{durable_to_pb, start_from_pb, stream_to_pb};
use super::pb::jetwatch::v1 as api;
use crate::config::Settings;
use crate::engine::Start;
use crate::error::Error;
use crate::store::{ConsumerStart, StartAt, Store};

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    settings: Settings,
}

impl AdminService {
    /// Serves the admin API for the declared streams.
    pub fn new(store: Store, settings: Settings) -> AdminService {
        AdminService { store, settings }
    }

    fn declared(&self, stream: &str) -> Result<(), Error> {
        match self.settings.stream(stream) {
            Some(_) => Ok(()),
            None => Err(Error::StreamNotFound(stream.to_owned())),
        }
    }
}

#[tonic::async_trait]
impl api::admin_server::Admin for AdminService {
    async fn list_streams(
        &self,
        _request: Request<api::ListStreamsRequest>,
    ) -> Result<Response<api::ListStreamsResponse>, Status> {
        let mut streams = Vec::new();
        for s in &self.settings.streams {
            let state = self
                .store
                .stream_state(&s.name)
                .await
                .map_err(Error::from)?;
            streams.push(stream_to_pb(&state));
        }
        Ok(Response::new(api::ListStreamsResponse { streams }))
    }

    async fn get_stream(
        &self,
        request: Request<api::GetStreamRequest>,
    ) -> Result<Response<api::StreamInfo>, Status> {
        let name = request.into_inner().stream;
        self.declared(&name)?;
        let state = self.store.stream_state(&name).await.map_err(Error::from)?;
        Ok(Response::new(stream_to_pb(&state)))
    }

    async fn list_subscriptions(
        &self,
        request: Request<api::ListSubscriptionsRequest>,
    ) -> Result<Response<api::ListSubscriptionsResponse>, Status> {
        let stream = request.into_inner().stream;
        let streams: Vec<String> = if stream.is_empty() {
            self.settings
                .streams
                .iter()
                .map(|s| s.name.clone())
                .collect()
        } else {
            self.declared(&stream)?;
            vec![stream]
        };
        let mut subscriptions = Vec::new();
        for s in streams {
            for d in self.store.durables(&s).await.map_err(Error::from)? {
                subscriptions.push(durable_to_pb(&d));
            }
        }
        Ok(Response::new(api::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<api::GetSubscriptionRequest>,
    ) -> Result<Response<api::SubscriptionInfo>, Status> {
        let r = request.into_inner();
        self.declared(&r.stream)?;
        let d = self
            .store
            .durable(&r.stream, &r.durable)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(durable_to_pb(&d)))
    }

    async fn delete_subscription(
        &self,
        request: Request<api::DeleteSubscriptionRequest>,
    ) -> Result<Response<api::DeleteSubscriptionResponse>, Status> {
        let r = request.into_inner();
        self.declared(&r.stream)?;
        self.store
            .delete_durable(&r.stream, &r.durable)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(api::DeleteSubscriptionResponse {}))
    }

    async fn seek_subscription(
        &self,
        request: Request<api::SeekSubscriptionRequest>,
    ) -> Result<Response<api::SubscriptionInfo>, Status> {
        let r = request.into_inner();
        self.declared(&r.stream)?;
        let state = self
            .store
            .stream_state(&r.stream)
            .await
            .map_err(Error::from)?;
        let start = match start_from_pb(r.start, "start")? {
            Start::New => ConsumerStart::New,
            Start::Earliest => ConsumerStart::All,
            Start::Sequence(s) if s < state.first_sequence => {
                return Err(Error::HistoryExpired {
                    requested: s,
                    first_sequence: state.first_sequence,
                }
                .into())
            }
            Start::Sequence(s) => ConsumerStart::At(StartAt::Sequence(s)),
            Start::Time(t) => ConsumerStart::At(StartAt::Time(t)),
            Start::Snapshot => ConsumerStart::At(StartAt::LastPerSubject),
            Start::Resume => {
                return Err(Error::invalid("start", "seek to a position other than resume").into())
            }
        };
        let d = self
            .store
            .seek_durable(&r.stream, &r.durable, start)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(durable_to_pb(&d)))
    }
}
