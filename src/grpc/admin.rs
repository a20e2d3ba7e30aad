//! `jetwatch.v1.Admin`: streams and durable subscriptions. Converts and delegates to the
//! admin domain ([`crate::admin`]).

use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{durable_to_pb, start_from_pb, stream_to_pb};
use super::pb::jetwatch::v1 as api;
use crate::admin::Admin;

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    admin: Admin,
}

impl AdminService {
    /// Serves `admin`.
    pub fn new(admin: Admin) -> AdminService {
        AdminService { admin }
    }
}

#[tonic::async_trait]
impl api::admin_server::Admin for AdminService {
    async fn list_streams(
        &self,
        request: Request<api::ListStreamsRequest>,
    ) -> Result<Response<api::ListStreamsResponse>, Status> {
        let caller = caller(&request);
        let streams = self.admin.streams(caller.as_deref()).await?;
        Ok(Response::new(api::ListStreamsResponse {
            streams: streams.iter().map(stream_to_pb).collect(),
        }))
    }

    async fn get_stream(
        &self,
        request: Request<api::GetStreamRequest>,
    ) -> Result<Response<api::StreamInfo>, Status> {
        let caller = caller(&request);
        let state = self
            .admin
            .stream(caller.as_deref(), &request.into_inner().stream)
            .await?;
        Ok(Response::new(stream_to_pb(&state)))
    }

    async fn list_subscriptions(
        &self,
        request: Request<api::ListSubscriptionsRequest>,
    ) -> Result<Response<api::ListSubscriptionsResponse>, Status> {
        let caller = caller(&request);
        let stream = request.into_inner().stream;
        let durables = self
            .admin
            .durables(
                caller.as_deref(),
                Some(stream.as_str()).filter(|s| !s.is_empty()),
            )
            .await?;
        Ok(Response::new(api::ListSubscriptionsResponse {
            subscriptions: durables.iter().map(durable_to_pb).collect(),
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<api::GetSubscriptionRequest>,
    ) -> Result<Response<api::SubscriptionInfo>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let d = self
            .admin
            .durable(caller.as_deref(), &r.stream, &r.durable)
            .await?;
        Ok(Response::new(durable_to_pb(&d)))
    }

    async fn delete_subscription(
        &self,
        request: Request<api::DeleteSubscriptionRequest>,
    ) -> Result<Response<api::DeleteSubscriptionResponse>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        self.admin
            .delete_durable(caller.as_deref(), &r.stream, &r.durable)
            .await?;
        Ok(Response::new(api::DeleteSubscriptionResponse {}))
    }

    async fn seek_subscription(
        &self,
        request: Request<api::SeekSubscriptionRequest>,
    ) -> Result<Response<api::SubscriptionInfo>, Status> {
        let caller = caller(&request);
        let r = request.into_inner();
        let start = start_from_pb(r.start, "start")?;
        let d = self
            .admin
            .seek_durable(caller.as_deref(), &r.stream, &r.durable, start)
            .await?;
        Ok(Response::new(durable_to_pb(&d)))
    }

    async fn get_server_info(
        &self,
        _request: Request<api::GetServerInfoRequest>,
    ) -> Result<Response<api::ServerInfo>, Status> {
        Ok(Response::new(api::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api: "jetwatch.v1".to_owned(),
        }))
    }
}
