//! `jetwatch.v1.Admin`: streams and durable subscriptions.

use tonic::{Request, Response, Status};

use super::convert::stream_to_pb;
use super::pb::jetwatch::v1 as api;
use crate::config::Settings;
use crate::error::Error;
use crate::store::Store;

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
        _request: Request<api::ListSubscriptionsRequest>,
    ) -> Result<Response<api::ListSubscriptionsResponse>, Status> {
        Err(Error::Unimplemented("durable subscriptions".into()).into())
    }

    async fn get_subscription(
        &self,
        _request: Request<api::GetSubscriptionRequest>,
    ) -> Result<Response<api::SubscriptionInfo>, Status> {
        Err(Error::Unimplemented("durable subscriptions".into()).into())
    }

    async fn delete_subscription(
        &self,
        _request: Request<api::DeleteSubscriptionRequest>,
    ) -> Result<Response<api::DeleteSubscriptionResponse>, Status> {
        Err(Error::Unimplemented("durable subscriptions".into()).into())
    }

    async fn seek_subscription(
        &self,
        _request: Request<api::SeekSubscriptionRequest>,
    ) -> Result<Response<api::SubscriptionInfo>, Status> {
        Err(Error::Unimplemented("durable subscriptions".into()).into())
    }
}
